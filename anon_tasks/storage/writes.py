"""Writing a file by URL all-or-nothing, never inside a protected root (the source).

A dataset reader never sees half an image: a local file is written under a temporary name (in
a staging folder the caller names, e.g. ``<dest>/_anonymize/tmp``, else hidden beside the
target) and renamed over the target; an object store gets one PUT of the whole object. Local
files get the mode ``cp`` would give them (``0o666`` less the umask), and a write whose real
location lies inside a protected root (the source) is refused.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from anon_tasks.core.errors import UnsafePathError
from anon_tasks.core.urls import is_local, local_path, redact_url
from anon_tasks.storage.locations import StorageOptions, location_within, url_to_fs

__all__ = ["TEMP_PREFIX", "flush_to_disk", "remove_stale_staging_files", "write_bytes_atomic"]

logger = logging.getLogger(__name__)

#: Prefix of temporary files; dataset readers skip dot-files.
TEMP_PREFIX = ".anon-tmp-"


def write_bytes_atomic(
    url: str,
    content: bytes,
    options: StorageOptions | None = None,
    *,
    staging_dir: str | None = None,
    protected_root: str | None = None,
    durable: bool = True,
) -> None:
    """Write ``content`` to ``url`` so that readers see either nothing or the whole file.

    A local file gets the mode ``cp`` gives a new file (``0o666`` less the umask); folders
    created on the way honour the umask too.

    Args:
        url: The target.
        content: The whole file.
        options: fsspec storage options for remote URLs.
        staging_dir: Local folder (on the target's filesystem) for the temporary file, so none
            is ever left among the dataset's files; default: hidden, beside the target.
        protected_root: A location never written into (the source): a target or staging
            folder whose real location is it or lies inside it is refused before anything is
            created. Every link on the way is followed (a linked folder in dest leading into
            the source, a target that is itself a link); checked again just before the rename.
        durable: Flush a local file to disk before it is renamed into place. A caller writing
            many files passes False and calls :func:`flush_to_disk` once for all of them before
            it records them anywhere (one journal commit instead of one per file).

    Raises:
        UnsafePathError: The target or the staging folder lies inside ``protected_root``.
    """
    if protected_root is not None:
        _refuse_protected(url, protected_root, options)
        if staging_dir is not None:
            _refuse_protected(staging_dir, protected_root, options)
    if is_local(url):
        _write_local_atomic(local_path(url), content, staging_dir, protected_root, durable)
        return
    fs, path = url_to_fs(url, options)
    if isinstance(fs, LocalFileSystem):
        _write_local_atomic(Path(path), content, staging_dir, protected_root, durable)
        return
    fs.pipe_file(path, content)  # one PUT: object stores never expose a partial object


def _refuse_protected(url: str, protected_root: str, options: StorageOptions | None) -> None:
    if location_within(url, protected_root, options):
        raise UnsafePathError(
            "lies inside the protected source; the source is never written",
            source=redact_url(url),
        )


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


_umask_lock = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else set and restored.

    The fallback sets ``0o077`` for an instant: a file another thread creates meanwhile gets a
    stricter mode, never a looser one.
    """
    try:
        with open("/proc/self/status", "rb") as status:  # noqa: PTH123 (a hot path: no Path)
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def flush_to_disk(urls: Iterable[str], options: StorageOptions | None = None) -> None:
    """Make the local files just written at ``urls`` durable: one flush per filesystem.

    Linux flushes a whole filesystem with ``syncfs`` (one journal commit, whatever the number
    of files); elsewhere every filesystem is flushed (``os.sync``). Object-store URLs need
    nothing: a PUT is durable when it returns.
    """
    folders = set()
    for url in urls:
        if is_local(url):
            folders.add(local_path(url).parent)
        else:
            fs, path = url_to_fs(url, options)
            if isinstance(fs, LocalFileSystem):
                folders.add(Path(path).parent)
    if not folders:
        return
    devices: dict[int, Path] = {}
    for folder in folders:
        try:
            devices.setdefault(folder.stat().st_dev, folder)
        except OSError:  # gone since: nothing of it to flush
            continue
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    for folder in devices.values():
        handle = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(handle) != 0:
                raise OSError(ctypes.get_errno(), f"syncfs failed for {folder}")
        finally:
            os.close(handle)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _write_local_atomic(
    target: Path,
    content: bytes,
    staging_dir: str | None,
    protected_root: str | None,
    durable: bool = True,
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)  # mode 0o777, less the umask
    folder = target.parent
    if staging_dir is not None and is_local(staging_dir):
        folder = local_path(staging_dir)
        folder.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_current_umask()
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)  # created 0o600
    try:
        with os.fdopen(handle, "wb") as file:
            if hasattr(os, "fchmod"):
                os.fchmod(file.fileno(), mode)
            else:  # pragma: no cover - Windows before Python 3.13
                os.chmod(temp_name, mode)  # noqa: PTH101
            file.write(content)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        if protected_root is not None:  # a folder swapped for a link since the first check
            _refuse_protected(str(target), protected_root, None)
        try:
            Path(temp_name).replace(target)
        except OSError as exc:
            if exc.errno != errno.EXDEV or folder == target.parent:
                raise
            Path(temp_name).unlink(missing_ok=True)
            _write_local_atomic(target, content, None, protected_root, durable)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
