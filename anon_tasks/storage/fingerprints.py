"""Content fingerprints of files and objects, from their metadata alone (nothing is read)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from anon_tasks.core.urls import is_local, local_path
from anon_tasks.storage.locations import StorageOptions, url_to_fs

__all__ = ["file_fingerprint", "local_fingerprint", "object_fingerprint"]


def object_fingerprint(info: Mapping[str, Any]) -> str:
    """A content fingerprint from an fsspec ``info`` entry: version id, ETag, or size+mtime."""
    for key in ("VersionId", "version_id", "ETag", "etag", "e_tag"):
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return f"size:{info.get('size', 0)}:mtime:{mtime}"


def local_fingerprint(stat: os.stat_result) -> str:
    """The fingerprint of a local file from its ``stat``.

    Size and modification time, plus what copying cannot forge (as git's index does): the
    inode and the status-change time, which ``cp -p``, tar and rsync restores cannot set. A
    file replaced by another with the same size and mtime therefore gets a new fingerprint.
    """
    return (
        f"size:{stat.st_size}:mtime_ns:{stat.st_mtime_ns}"
        f":ino:{stat.st_ino}:ctime_ns:{stat.st_ctime_ns}"
    )


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
