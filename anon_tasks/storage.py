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

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["is_local", "join_url", "read_bytes", "write_bytes_atomic"]

logger = logging.getLogger(__name__)

#: Prefix of temporary files; dataset readers skip dot-files.
TEMP_PREFIX = ".anon-tmp-"


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on the local filesystem."""
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def join_url(base: str, relative: str) -> str:
    """``base`` joined with a POSIX relative path."""
    if is_local(base):
        return str(_local_path(base) / PurePosixPath(relative))
    return base.rstrip("/") + "/" + relative


def read_bytes(url: str, **storage_options: object) -> bytes:
    """The whole content of the file at ``url``."""
    if is_local(url):
        return _local_path(url).read_bytes()
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs.cat_file(path)


def write_bytes_atomic(url: str, content: bytes, **storage_options: object) -> None:
    """Write ``content`` to ``url`` so that readers see either nothing or the whole file."""
    if is_local(url):
        _write_local_atomic(_local_path(url), content)
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
