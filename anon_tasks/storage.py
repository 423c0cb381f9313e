"""Reading and writing files by URL: local paths and any fsspec filesystem (S3 through s3fs).

Writes are all-or-nothing so a dataset reader never sees half an image: a local file is written
under a temporary name (in a staging folder the caller names, e.g. ``<dest>/_anonymize/tmp``,
else hidden beside the target) and renamed over the target; an object store gets one PUT of the
whole object.

``options`` are fsspec storage options (``endpoint_url``, ``profile``, credentials from a
Prefect block...). They are passed straight to the filesystem and never logged. Relative paths
joined onto a root must stay inside it: ``..``, absolute paths and backslashes are refused.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from anon_tasks.errors import UnsafePathError

__all__ = [
    "StorageOptions",
    "file_fingerprint",
    "is_local",
    "join_url",
    "local_fingerprint",
    "local_path",
    "object_fingerprint",
    "read_bytes",
    "remove_stale_staging_files",
    "safe_relative_path",
    "url_to_fs",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)

StorageOptions = Mapping[str, Any]

#: Prefix of temporary files; dataset readers skip dot-files.
TEMP_PREFIX = ".anon-tmp-"


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on the local filesystem."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    """The filesystem path of a local URL (a plain path or ``file://``)."""
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def url_to_fs(url: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and path for ``url`` (instances are cached by fsspec)."""
    return fsspec.core.url_to_fs(url, **dict(options or {}))


def safe_relative_path(relative: str) -> str:
    """``relative`` if it stays inside whatever root it is joined to.

    Raises:
        UnsafePathError: It is absolute, contains ``..`` or empty segments, backslashes or NUL.
    """
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
    ):
        raise UnsafePathError(
            "path escapes its root or is not a plain relative path", source=relative
        )
    return relative


def join_url(base: str, relative: str) -> str:
    """``base`` joined with a POSIX relative path that must stay inside it."""
    safe_relative_path(relative)
    if is_local(base):
        return str(local_path(base) / PurePosixPath(relative))
    return base.rstrip("/") + "/" + relative


def read_bytes(url: str, options: StorageOptions | None = None) -> bytes:
    """The whole content of the file at ``url``."""
    if is_local(url):
        return local_path(url).read_bytes()
    fs, path = url_to_fs(url, options)
    return fs.cat_file(path)


def object_fingerprint(info: Mapping[str, Any]) -> str:
    """A content fingerprint from an fsspec ``info`` entry: version id, ETag, or size+mtime."""
    for key in ("VersionId", "version_id", "ETag", "etag", "e_tag"):
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return f"size:{info.get('size', 0)}:mtime:{mtime}"


def local_fingerprint(stat: os.stat_result) -> str:
    """The fingerprint of a local file from its ``stat``: size and modification time."""
    return f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"


def file_fingerprint(url: str, options: StorageOptions | None = None) -> str | None:
    """The content fingerprint of the file at ``url`` (as listing gives it), or None if absent."""
    if is_local(url):
        try:
            return local_fingerprint(local_path(url).stat())
        except FileNotFoundError:
            return None
    fs, path = url_to_fs(url, options)
    fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return object_fingerprint(info)


def write_bytes_atomic(
    url: str,
    content: bytes,
    options: StorageOptions | None = None,
    *,
    staging_dir: str | None = None,
) -> None:
    """Write ``content`` to ``url`` so that readers see either nothing or the whole file.

    Args:
        url: The target.
        content: The whole file.
        options: fsspec storage options for remote URLs.
        staging_dir: Local folder (on the target's filesystem) for the temporary file, so none
            is ever left among the dataset's files; default: hidden, beside the target.
    """
    if is_local(url):
        _write_local_atomic(local_path(url), content, staging_dir)
        return
    fs, path = url_to_fs(url, options)
    if isinstance(fs, LocalFileSystem):
        _write_local_atomic(Path(path), content, staging_dir)
        return
    fs.pipe_file(path, content)  # one PUT: object stores never expose a partial object


def remove_stale_staging_files(staging_dir: str, older_than_seconds: float = 3600.0) -> int:
    """Delete temporary files a crashed run left in a local staging folder; returns the count.

    Only files older than ``older_than_seconds`` go, so a run writing right now keeps its own.
    """
    if not is_local(staging_dir):
        return 0
    folder = local_path(staging_dir)
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        logger.info("removed %d stale temporary file(s) from %s", removed, folder)
    return removed


def _write_local_atomic(target: Path, content: bytes, staging_dir: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent
    if staging_dir is not None and is_local(staging_dir):
        folder = local_path(staging_dir)
        folder.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        try:
            Path(temp_name).replace(target)
        except OSError as exc:
            if exc.errno != 18 or folder == target.parent:  # 18: EXDEV, another filesystem
                raise
            Path(temp_name).unlink(missing_ok=True)
            _write_local_atomic(target, content, None)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
