"""Image datasets: which files count as images, and walking a folder or prefix for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import fsspec

from anon_tasks.storage import is_local

__all__ = ["CAPTION_SUFFIXES", "IMAGE_SUFFIXES", "is_image_name", "iter_image_paths"]

#: Extensions read as images (case-insensitive). Every one can be written back in its format.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".mpo", ".avif"}
    | {".heic", ".heif"}
)
#: Caption sidecars copied beside their image (same stem), as LoRA trainers expect.
CAPTION_SUFFIXES = (".txt", ".caption", ".json")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension; hidden files never count."""
    return not PurePosixPath(name).name.startswith(".") and (
        PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
    )


def iter_image_paths(root_url: str) -> Iterator[str]:
    """Relative POSIX paths of the images under ``root_url``, sorted, skipping hidden folders."""
    if is_local(root_url):
        root = Path(root_url.removeprefix("file://"))
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts[:-1]):
                continue
            if path.is_file() and is_image_name(path.name):
                yield relative.as_posix()
        return
    fs, root_path = fsspec.core.url_to_fs(root_url)
    root_path = root_path.rstrip("/")
    for path in sorted(fs.find(root_path)):
        relative = path[len(root_path) :].lstrip("/")
        parts = PurePosixPath(relative).parts
        if any(part.startswith(".") for part in parts[:-1]):
            continue
        if is_image_name(relative):
            yield relative
