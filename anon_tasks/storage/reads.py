"""Reading a whole file by URL, bounded: only regular files, at most a size, within a time.

A FIFO, device, folder or socket named like an image is refused without blocking (locally it is
never opened: ``stat`` first, then ``O_NONBLOCK``), a file is never read past a size limit, and
a read never takes longer than a time limit: it runs on a worker thread the caller stops
waiting for, so a hung network mount never hangs the caller.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem

from anon_tasks.core.errors import UnreadableFileError
from anon_tasks.core.urls import is_local, local_path, redact_url
from anon_tasks.storage.locations import StorageOptions, url_to_fs

__all__ = ["DEFAULT_MAX_READ_BYTES", "DEFAULT_READ_TIMEOUT_S", "read_bytes"]

logger = logging.getLogger(__name__)

#: Largest file :func:`read_bytes` reads: a 200 MP RGBA 16-bit TIFF (1.6 GB) fits.
DEFAULT_MAX_READ_BYTES = 2 * 1024**3
#: Longest a read may take, from the first request to the last byte.
DEFAULT_READ_TIMEOUT_S = 300.0

#: Errors that say what a path is (not a transient storage failure): refused per file.
_UNREADABLE_ERRNOS = frozenset(
    {
        errno.ELOOP,
        errno.ENXIO,
        errno.ENODEV,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
    }
)
#: Largest single ``read()`` after the first (the first asks for the whole file at once).
_READ_CHUNK = 64 * 1024 * 1024
#: At most this many reads may hang at once before new reads queue behind them.
_MAX_READ_THREADS = 64


# --- the read threads --------------------------------------------------------------------------


class _ReadJob:
    """One read handed to a worker thread; ``done`` is released when it finished."""

    __slots__ = ("abandoned", "done", "error", "function", "result")

    def __init__(self, function: Callable[[_ReadJob], bytes]) -> None:
        self.function = function
        self.done = threading.Lock()
        self.done.acquire()
        self.result: bytes | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class _ReadThreads:
    """Daemon threads that run reads, so the caller can stop waiting for one that hangs.

    A thread stuck in a read (a hung network mount) stays stuck, but never blocks the caller,
    nor the interpreter's exit. At most ``_MAX_READ_THREADS`` exist; beyond that, reads queue
    (and time out if every thread is stuck).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_ReadJob] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def run(self, function: Callable[[_ReadJob], bytes], timeout_s: float) -> bytes | None:
        """The result of ``function(job)``, or None when it did not finish in ``timeout_s``."""
        job = _ReadJob(function)
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._count < _MAX_READ_THREADS:
                self._count += 1
                threading.Thread(
                    target=self._work, name=f"anon-tasks-read-{self._count}", daemon=True
                ).start()
            else:
                logger.warning("all %d read threads are busy or stuck", _MAX_READ_THREADS)
        self._jobs.put(job)
        if not job.done.acquire(timeout=min(timeout_s, threading.TIMEOUT_MAX)):
            job.abandoned = True
            return None
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if not job.abandoned:
                try:
                    job.result = job.function(job)
                except BaseException as exc:  # handed to the caller, who raises it
                    job.error = exc
                finally:
                    job.done.release()
            with self._lock:
                self._idle += 1


_read_threads = _ReadThreads()


def _new_read_threads_after_fork() -> None:
    """A forked child has none of its parent's threads: it counts its own from zero."""
    global _read_threads
    _read_threads = _ReadThreads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_read_threads_after_fork)


# --- bounded reads -----------------------------------------------------------------------------


def read_bytes(
    url: str,
    options: StorageOptions | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_READ_BYTES,
    timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> bytes:
    """The whole content of the regular file at ``url``, bounded in size and time.

    Args:
        url: A local path or fsspec URL.
        options: fsspec storage options for remote URLs.
        max_bytes: Refuse a file larger than this, before reading it (and one that grows past
            it while read).
        timeout_s: Refuse a read that has not finished after this many seconds.

    Raises:
        FileNotFoundError: Nothing is there (or a link points nowhere).
        UnreadableFileError: Not a regular file (a FIFO, device, folder, socket, a link loop),
            not readable, larger than ``max_bytes``, or not read within ``timeout_s``.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be at least 0, got {max_bytes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be above 0, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    if is_local(url):
        path = str(local_path(url))

        def read(job: _ReadJob) -> bytes:
            return _read_local(path, url, max_bytes=max_bytes, job=job)
    else:

        def read(job: _ReadJob) -> bytes:
            return _read_remote(url, options, max_bytes=max_bytes, deadline=deadline)

    try:
        content = _read_threads.run(read, timeout_s)
    except FSTimeoutError:  # an async filesystem's own deadline, the same one
        content = None
    if content is None:
        raise UnreadableFileError(
            f"the read did not finish within {timeout_s:g} s", source=redact_url(url)
        )
    return content


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_irregular(mode: int, source: str) -> None:
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(f"{_describe(mode)}, not a regular file", source=source)


def _refuse_os_error(exc: OSError, source: str) -> None:
    """Raise ``UnreadableFileError`` for errors that say what the path is; else return."""
    if exc.errno == errno.ELOOP:
        raise UnreadableFileError("a symbolic link loop", source=source) from None
    if exc.errno in _UNREADABLE_ERRNOS:
        reason = os.strerror(exc.errno).lower() if exc.errno is not None else "unreadable"
        raise UnreadableFileError(f"cannot be read: {reason}", source=source) from None


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _read_local(path: str, source: str, *, max_bytes: int, job: _ReadJob | None = None) -> bytes:
    """Read a local regular file: never opens anything else, never blocks on opening."""
    try:
        # stat first: opening a device may act on it (rewind a tape), so it is never opened.
        _refuse_irregular(os.stat(path).st_mode, source)  # noqa: PTH116 (hot path)
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        _refuse_os_error(exc, source)
        raise
    try:
        info = os.fstat(descriptor)  # the file opened, should the path have changed meanwhile
        _refuse_irregular(info.st_mode, source)
        if info.st_size > max_bytes:
            raise UnreadableFileError(
                f"{info.st_size} bytes, more than the read limit of {max_bytes}", source=source
            )
        try:
            # One byte more than the limit, to notice a file that grew meanwhile.
            content = _read_descriptor(descriptor, info.st_size, max_bytes + 1, job)
        except OSError as exc:
            _refuse_os_error(exc, source)
            raise
    finally:
        os.close(descriptor)
    _refuse_grown(len(content), max_bytes, source)
    return content


def _read_descriptor(descriptor: int, size: int, wanted: int, job: _ReadJob | None) -> bytes:
    """Up to ``wanted`` bytes: the whole file in one system call, then to the end in chunks."""
    parts: list[bytes] = []
    total = 0
    request = min(size + 1, wanted)  # + 1: the end of the file shows in the same call
    while total < wanted and not (job is not None and job.abandoned):
        chunk = os.read(descriptor, request)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        request = min(_READ_CHUNK, wanted - total)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _refuse_grown(size: int, max_bytes: int, source: str) -> None:
    if size > max_bytes:
        raise UnreadableFileError(
            f"grew past the read limit of {max_bytes} bytes while being read", source=source
        )


def _read_remote(
    url: str, options: StorageOptions | None, *, max_bytes: int, deadline: float
) -> bytes:
    """Read through fsspec: the size (``info``) is checked before any byte is fetched."""
    source = redact_url(url)
    fs, path = url_to_fs(url, options)
    if isinstance(fs, LocalFileSystem):
        return _read_local(path, source, max_bytes=max_bytes)
    timeout = _async_timeout(fs, deadline)
    fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
    info = fs.info(path, **timeout(fs.info))
    kind = info.get("type", "file")
    if kind != "file":
        what = "a folder" if kind == "directory" else f"a {kind}"
        raise UnreadableFileError(f"{what}, not a regular file", source=source)
    size = info.get("size")
    if size is not None and int(size) > max_bytes:
        raise UnreadableFileError(
            f"{size} bytes, more than the read limit of {max_bytes}", source=source
        )
    content = fs.cat_file(path, **timeout(fs.cat_file))
    _refuse_grown(len(content), max_bytes, source)
    return content


def _async_timeout(fs: Any, deadline: float) -> Callable[[Any], dict[str, float]]:
    """``timeout=`` for an async filesystem's sync methods (fsspec then cancels the request)."""

    def keywords(method: Any) -> dict[str, float]:
        wrapped = getattr(method, "__wrapped__", None)
        if wrapped is None or not inspect.iscoroutinefunction(wrapped):
            return {}
        return {"timeout": max(deadline - time.monotonic(), 0.001)}

    return keywords
