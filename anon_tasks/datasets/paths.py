"""Where a run may read and write: checked once, before any work starts.

The invariant: nothing a run writes (outputs, sidecars, the manifest, the result storage) can
land inside the source, and a run never starts when its paths make no sense. Every storage
the tool accepts is compared in one normal form (``storage.normalize_location``): ``s3://``,
``s3a://`` and ``s3n://`` name the same bucket, ``file://x`` and ``x`` the same folder, and
local folders are compared by their real paths, links resolved. The writers enforce the same
rule again at write time (``write_bytes_atomic(..., protected_root=source)``).
"""

from __future__ import annotations

import os

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.formats import format_for_name
from anon_tasks.core.settings import BLOCK_SLUG
from anon_tasks.core.urls import is_local, local_path, redact_url, url_problem
from anon_tasks.datasets.manifest import INTERNAL_DIRS
from anon_tasks.storage.locations import StorageOptions, join_url, location_within, url_to_fs

__all__ = ["check_dataset_paths", "check_file_paths"]


def _overlap(source: str, other: str, options: StorageOptions | None) -> str | None:
    """How ``other`` overlaps ``source`` ('is', 'is inside', 'contains'), or None."""
    inside = location_within(other, source, options)
    contains = location_within(source, other, options)
    if inside and contains:
        return "is"
    if inside:
        return "is inside"
    if contains:
        return "contains"
    return None


def _refuse_bad_url(field: str, url: str) -> None:
    """Raise naming ``field`` when ``url`` is empty (a local path "" is the working directory)
    or breaks the URL rule (``storage.url_problem``)."""
    if not url.strip():
        raise ConfigurationError(
            f"{field} is empty: give a folder or fsspec URL (a deployment's event trigger "
            f"leaves it empty when the event's payload has no {field!r})",
            field=field,
        )
    problem = url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"{field}={redact_url(url)!r}: {problem}", field=field)


def _refuse_overlap(field: str, location: str, source: str, options: StorageOptions | None) -> None:
    """Raise naming ``field`` when ``location`` is the source, inside it or contains it."""
    overlap = _overlap(source, location, options)
    if overlap is not None:
        raise ConfigurationError(
            f"{field}={redact_url(location)!r} {overlap} source={redact_url(source)!r}: the "
            f"source is never written, so {field} must lie outside it and must not contain it",
            field=field,
        )


def _check_local_folder_target(url: str, field: str) -> None:
    """A local dest must be a folder or not exist yet, and no part of it may be a file."""
    path = local_path(url)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"is below the file {str(part)!r}"
            raise ConfigurationError(f"{field}={url!r} {where}: it must be a folder", field=field)


def _check_remote_source(source: str, options: StorageOptions | None) -> None:
    """A remote source must be a prefix that holds objects: a typo must not read as empty
    (a run over an empty source would remove every output of the previous one)."""
    shown = redact_url(source)
    try:
        fs, path = url_to_fs(source, options)
        fs.invalidate_cache(path)  # ask the store, not a listing cached by an earlier run
        if fs.isfile(path):
            raise ConfigurationError(
                f"source={shown!r} is one object: give the folder (prefix) that holds it",
                field="source",
            )
        exists = fs.isdir(path)
    except ConfigurationError:
        raise
    except Exception as exc:  # no bucket, no credentials, no endpoint: one line, exit code 2
        raise ConfigurationError(
            f"source={shown!r} cannot be listed: {type(exc).__name__}", field="source"
        ) from None
    if not exists:
        raise ConfigurationError(
            f"source={shown!r} does not exist (no objects under it)", field="source"
        )


def _check_remote_dest(dest: str, options: StorageOptions | None) -> None:
    """The bucket (or container) of a remote dest must exist and be reachable."""
    shown = redact_url(dest)
    try:
        fs, path = url_to_fs(dest, options)
        fs.invalidate_cache(path)
        root = path.strip("/").split("/", 1)[0]
        if root and not fs.exists(root):
            raise ConfigurationError(
                f"dest={shown!r}: its bucket {root!r} does not exist", field="dest"
            )
        if path.strip("/") and fs.isfile(path):
            raise ConfigurationError(
                f"dest={shown!r} is an object: it must be a folder", field="dest"
            )
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"dest={shown!r} cannot be reached: {type(exc).__name__}", field="dest"
        ) from None


def check_dataset_paths(
    source: str,
    dest: str,
    *,
    result_storage: str | None = None,
    options: StorageOptions | None = None,
) -> None:
    """Refuse a dataset run whose paths would read nothing or write into the source.

    Args:
        source: The dataset root.
        dest: The output root.
        result_storage: Where detections are cached, when it is a path or URL (a block slug
            is checked by the flow, which can load it).
        options: fsspec storage options.

    Raises:
        ConfigurationError: source or dest is empty; a URL breaks the URL rule (a chain,
            credentials, a query, an unknown protocol); the source is missing, empty, one file
            or not a folder; dest (or the result storage) is the source, inside it or a folder
            that contains it; dest is a file or below one, or its bucket does not exist. The
            message names the field and never repeats a credential.
    """
    # A block slug is checked by the flow, which can load the block; a path or URL here.
    storage_location = (
        result_storage
        if result_storage is not None and not BLOCK_SLUG.match(result_storage)
        else None
    )
    _refuse_bad_url("source", source)
    _refuse_bad_url("dest", dest)
    if storage_location is not None:
        _refuse_bad_url("result_storage", storage_location)
    if is_local(source):
        source_path = local_path(source)
        if not source_path.exists():
            raise ConfigurationError(f"source={source!r} does not exist", field="source")
        if not source_path.is_dir():
            raise ConfigurationError(f"source={source!r} is not a folder", field="source")
    _refuse_overlap("dest", dest, source, options)
    if storage_location is not None:
        _refuse_overlap("result_storage", storage_location, source, options)
    if is_local(dest):
        _check_local_folder_target(dest, "dest")
        # dest/_anonymize holds the manifest, staging files, journals, the review page and (by
        # default) the cache: a link there, or in a folder below it, must not lead into the
        # source either.
        for internal in INTERNAL_DIRS:
            if location_within(join_url(dest, internal), source, options):
                raise ConfigurationError(
                    f"dest={dest!r}: {internal} leads into source={source!r}; the source is "
                    "never written",
                    field="dest",
                )
    else:
        _check_remote_dest(dest, options)
    if not is_local(source):
        _check_remote_source(source, options)


def check_file_paths(source: str, dest: str) -> None:
    """Refuse a single-file run that would overwrite its source or cannot be written.

    Raises:
        ConfigurationError: dest is empty, or is the source (the same path, or the same file
            through a link or a hard link), is an existing folder, is below a file, or has an
            extension that names no image format this tool writes.
    """
    _refuse_bad_url("dest", dest)
    source_path, dest_path = local_path(source), local_path(dest)
    if not source_path.exists():
        raise ConfigurationError(f"source={source!r} does not exist", field="source")
    if not source_path.is_file():
        raise ConfigurationError(f"source={source!r} is not a regular file", field="source")
    if is_local(dest) and dest_path.is_dir():
        example = str(dest_path / source_path.name)
        raise ConfigurationError(
            f"dest={dest!r} is a folder: name the output file, e.g. {example!r}", field="dest"
        )
    if format_for_name(dest) is None:
        raise ConfigurationError(
            f"dest={dest!r} has no image extension this tool writes "
            "(.jpg, .png, .webp, .gif, .tif, .bmp, .avif, .heic)",
            field="dest",
        )
    if not is_local(dest):
        return
    same = os.path.realpath(source_path) == os.path.realpath(dest_path)
    if not same and dest_path.exists():
        same = source_path.samefile(dest_path)
    if same:
        raise ConfigurationError(
            f"dest={dest!r} is the source file: the source is never written", field="dest"
        )
    for parent in dest_path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigurationError(
                f"dest={dest!r} is below the file {str(parent)!r}", field="dest"
            )
