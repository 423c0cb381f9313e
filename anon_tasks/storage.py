"""Reading and writing files by URL: local paths and any fsspec filesystem.

Writes are all-or-nothing so a dataset reader never sees half an image: a local file is written
to a hidden temporary name in the same folder and renamed over the target; an object store gets
one PUT of the whole object.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "file_fingerprint",
    "is_local",
    "join_url",
    "local_path",
    "object_fingerprint",
    "read_bytes",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)

#: Prefix of temporary files; dataset readers skip dot-files.
TEMP_PREFIX = ".anon-tmp-"


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on the local filesystem."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    """The filesystem path of a local URL (a plain path or ``file://``)."""
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def join_url(base: str, relative: str) -> str:
    """``base`` joined with a POSIX relative path."""
    if is_local(base):
        return str(local_path(base) / PurePosixPath(relative))
    return base.rstrip("/") + "/" + relative


def read_bytes(url: str, **storage_options: object) -> bytes:
    """The whole content of the file at ``url``."""
    if is_local(url):
        return local_path(url).read_bytes()
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs.cat_file(path)


def object_fingerprint(info: dict[str, Any]) -> str:
    """A content fingerprint from an fsspec ``info`` entry: version id, ETag, or size+mtime."""
    for key in ("VersionId", "version_id", "ETag", "etag", "e_tag"):
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return f"size:{info.get('size', 0)}:mtime:{mtime}"


def file_fingerprint(url: str, **storage_options: object) -> str | None:
    """The content fingerprint of the file at ``url`` (as listing gives it), or None if absent."""
    if is_local(url):
        try:
            stat = local_path(url).stat()
        except FileNotFoundError:
            return None
        return f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return object_fingerprint(info)


def write_bytes_atomic(url: str, content: bytes, **storage_options: object) -> None:
    """Write ``content`` to ``url`` so that readers see either nothing or the whole file."""
    if is_local(url):
        _write_local_atomic(local_path(url), content)
        return
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if isinstance(fs, LocalFileSystem):
        _write_local_atomic(Path(path), content)
        return
    fs.pipe_file(path, content)  # one PUT: object stores never expose a partial object


def _write_local_atomic(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
