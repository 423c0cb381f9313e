"""Image datasets: which files are images, and listing a folder or prefix with fingerprints.

Listing is a generator: a prefix with many objects is walked, not loaded at once. Each image
comes with its caption sidecars (same stem) and a content fingerprint from the listing alone
(size and mtime locally, ETag or version id on object stores), so a rerun reads no image to
know that it is unchanged.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from anon_tasks.records import ImageRef, SidecarRef
from anon_tasks.storage import (
    StorageOptions,
    is_local,
    local_fingerprint,
    local_path,
    object_fingerprint,
    url_to_fs,
)

__all__ = [
    "CAPTION_SUFFIXES",
    "IMAGE_SUFFIXES",
    "file_fingerprints",
    "is_image_name",
    "list_dataset",
]

logger = logging.getLogger(__name__)

#: Extensions read as images (case-insensitive). Every one can be written back in its format.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".mpo", ".avif"}
    | {".heic", ".heif"}
)
#: Caption sidecars copied beside their image (same stem), as LoRA trainers expect.
CAPTION_SUFFIXES = (".txt", ".caption", ".json")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension; hidden files never count."""
    pure = PurePosixPath(name)
    return not pure.name.startswith(".") and pure.suffix.lower() in IMAGE_SUFFIXES


def _walk_local(root: Path, skip_dir: str | None = None) -> Iterator[tuple[str, int, str]]:
    """(relative path, size, fingerprint) of regular files under ``root``, inside it only."""
    resolved_root = root.resolve()
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        at_top = Path(folder) == root
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (at_top and d == skip_dir)
        )
        for name in sorted(filenames):
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(resolved_root):
                logger.warning("skipping %s: a link to outside the source", path)
                continue
            try:
                stat = path.stat()
            except OSError:  # vanished or a dangling link
                continue
            relative = path.relative_to(root).as_posix()
            yield relative, stat.st_size, local_fingerprint(stat)


def _s3_pages(fs: Any, root_path: str) -> Iterator[list[dict[str, Any]]]:
    """One ``list_objects_v2`` page (up to 1,000 objects) at a time, in key order."""
    from fsspec.asyn import sync

    bucket, _, prefix = root_path.partition("/")
    prefix = prefix + "/" if prefix else ""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        page = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        yield [
            {"name": f"{bucket}/{item['Key']}", "size": item.get("Size", 0), **item}
            for item in page.get("Contents", [])
        ]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _remote_entries(fs: Any, root_path: str) -> Iterator[dict[str, Any]]:
    """Every object under ``root_path``: paged from S3 (never the whole listing at once),
    from ``find`` elsewhere."""
    if type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_call_s3"):
        for page in _s3_pages(fs, root_path):
            yield from page
        return
    fs.invalidate_cache()
    for path, info in sorted(fs.find(root_path, detail=True).items()):
        if info.get("type", "file") == "file":
            yield {**info, "name": path}


def _walk_remote(
    root_url: str, skip_dir: str | None = None, options: StorageOptions | None = None
) -> Iterator[tuple[str, int, str]]:
    fs, root_path = url_to_fs(root_url, options)
    root_path = root_path.rstrip("/")
    for info in _remote_entries(fs, root_path):
        relative = info["name"][len(root_path) :].lstrip("/")
        parts = PurePosixPath(relative).parts
        if not parts or relative.endswith("/"):
            continue  # the prefix itself, or a "folder" marker object
        if any(part.startswith(".") for part in parts[:-1]) or parts[0] == skip_dir:
            continue
        yield relative, int(info.get("size") or 0), object_fingerprint(info)


def _group_by_folder(
    entries: Iterable[tuple[str, int, str]],
) -> Iterator[list[tuple[str, int, str]]]:
    """Consecutive entries of one folder (entries arrive sorted, folder by folder)."""
    batch: list[tuple[str, int, str]] = []
    folder: str | None = None
    for entry in entries:
        parent = str(PurePosixPath(entry[0]).parent)
        if batch and parent != folder:
            yield batch
            batch = []
        folder = parent
        batch.append(entry)
    if batch:
        yield batch


def list_dataset(root_url: str, options: StorageOptions | None = None) -> Iterator[ImageRef]:
    """The images under ``root_url`` with fingerprints and caption sidecars, in path order."""
    walk = (
        _walk_local(local_path(root_url))
        if is_local(root_url)
        else _walk_remote(root_url, None, options)
    )
    for batch in _group_by_folder(walk):
        sidecars: dict[str, list[SidecarRef]] = defaultdict(list)
        for relative, _size, fingerprint in batch:
            pure = PurePosixPath(relative)
            if pure.suffix.lower() in CAPTION_SUFFIXES:
                sidecars[str(pure.with_suffix(""))].append(
                    SidecarRef(relative_path=relative, fingerprint=fingerprint)
                )
        images = sorted(entry for entry in batch if is_image_name(entry[0]))
        for relative, size, fingerprint in images:
            yield ImageRef(
                relative_path=relative,
                size_bytes=size,
                fingerprint=fingerprint,
                sidecars=tuple(sidecars.get(str(PurePosixPath(relative).with_suffix("")), ())),
            )


def file_fingerprints(
    root_url: str, *, skip_dir: str | None = None, options: StorageOptions | None = None
) -> dict[str, str]:
    """Fingerprints of every file under ``root_url`` by relative path, from one listing.

    Args:
        root_url: A local folder or fsspec URL; a missing folder has no files.
        skip_dir: A top-level folder not to descend into (e.g. the manifest's own folder).
    """
    if is_local(root_url):
        root = local_path(root_url)
        if not root.is_dir():
            return {}
        walk = _walk_local(root, skip_dir)
    else:
        walk = _walk_remote(root_url, skip_dir, options)
    return {relative: fingerprint for relative, _size, fingerprint in walk}
