"""Reading and writing files by URL: local paths and any fsspec filesystem (S3 through s3fs).

Reads are bounded: only regular files are read (a FIFO, device, folder or socket named like an
image is refused without blocking), never more than a size limit, and never for longer than a
time limit (the read runs on a worker thread the caller stops waiting for).

Writes are all-or-nothing so a dataset reader never sees half an image: a local file is written
under a temporary name (in a staging folder the caller names, e.g. ``<dest>/_anonymize/tmp``,
else hidden beside the target) and renamed over the target; an object store gets one PUT of the
whole object. Local files get the mode ``cp`` would give them (``0o666`` less the umask), and a
write whose real location lies inside a protected root (the source) is refused.

``options`` are fsspec storage options (``endpoint_url``, ``profile``, credentials from a
Prefect block...). They are passed straight to the filesystem and never logged. Relative paths
joined onto a root must stay inside it: ``..``, absolute paths and backslashes are refused.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import queue
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.exceptions import FSTimeoutError
from fsspec.implementations.local import LocalFileSystem

from anon_tasks.core.errors import UnreadableFileError, UnsafePathError
from anon_tasks.core.urls import filesystem_class, is_local, local_path, redact_url, url_problem

__all__ = [
    "DEFAULT_MAX_READ_BYTES",
    "DEFAULT_READ_TIMEOUT_S",
    "S3_CONNECT_TIMEOUT_S",
    "S3_READ_TIMEOUT_S",
    "StorageOptions",
    "file_fingerprint",
    "is_local",
    "join_url",
    "local_fingerprint",
    "local_path",
    "location_within",
    "normalize_location",
    "object_fingerprint",
    "read_bytes",
    "read_head",
    "redact_url",
    "remove_stale_staging_files",
    "safe_relative_path",
    "url_problem",
    "url_to_fs",
    "write_bytes_atomic",
]

logger = logging.getLogger(__name__)

StorageOptions = Mapping[str, Any]

#: Prefix of temporary files; dataset readers skip dot-files.
TEMP_PREFIX = ".anon-tmp-"

#: Largest file :func:`read_bytes` reads: a 200 MP RGBA 16-bit TIFF (1.6 GB) fits.
DEFAULT_MAX_READ_BYTES = 2 * 1024**3
#: Longest a read may take, from the first request to the last byte.
DEFAULT_READ_TIMEOUT_S = 300.0
#: botocore timeouts s3fs gets when the storage options name none (``config_kwargs``).
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 30.0

_S3_PROTOCOLS = frozenset({"s3", "s3a", "s3n"})
#: Protocols that name the same storage, by the family they are compared in.
_FAMILIES = {
    "s3": "s3",
    "s3a": "s3",
    "s3n": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "abfs",
    "abfs": "abfs",
    "abfss": "abfs",
    "file": "file",
    "local": "file",
}
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


def url_to_fs(url: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and path for ``url`` (instances are cached by fsspec).

    S3 filesystems get connect and read timeouts (``config_kwargs``) unless the options set
    them, so a stalled connection fails and is retried instead of hanging a worker.
    """
    kwargs = dict(options or {})
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in _S3_PROTOCOLS:
        config = dict(kwargs.get("config_kwargs") or {})
        config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT_S)
        config.setdefault("read_timeout", S3_READ_TIMEOUT_S)
        kwargs["config_kwargs"] = config
    return fsspec.core.url_to_fs(url, **kwargs)


def safe_relative_path(relative: str) -> str:
    """``relative`` if it stays inside whatever root it is joined to.

    ``a:b.jpg`` is a legal POSIX name and is accepted; on Windows a colon (a drive letter or
    an alternate data stream) is refused.

    Raises:
        UnsafePathError: It is absolute, contains ``..``, ``.`` or empty segments, backslashes
            or NUL, or (on Windows only) a colon.
    """
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(part in ("", ".", "..") for part in parts)
        or (os.name == "nt" and ":" in relative)
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


# --- where a URL points ------------------------------------------------------------------------


def normalize_location(url: str, options: StorageOptions | None = None) -> tuple[str, str]:
    """The storage family and absolute normal path of ``url``, for comparing locations.

    Local paths (plain, ``file://`` or ``local://``) are ``("file", real path)``: absolute,
    every link resolved, ``..`` applied. ``s3://``, ``s3a://`` and ``s3n://`` are family ``s3``
    and the path is ``bucket/key`` with repeated, trailing and ``.`` separators dropped; ``..``
    is kept, since an object store keeps it literally. Other fsspec protocols are named by
    their filesystem's first protocol (``gcs`` is ``gs``) and normalised the same way. No
    filesystem is opened.

    Args:
        url: A local path or fsspec URL (a chained URL is compared by its last link, the
            storage that holds the bytes).
        options: fsspec storage options; accepted for symmetry, locations need none.
    """
    del options  # a location is known from the URL alone
    if "::" in url:
        url = url.rsplit("::", 1)[1]
    if is_local(url):
        return "file", os.path.realpath(local_path(url))
    protocol = url.split("://", 1)[0].lower()
    path = url.split("://", 1)[1]
    family = _FAMILIES.get(protocol)
    if family is None:
        cls = filesystem_class(protocol)
        if cls is not None:
            names = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
            family = "file" if issubclass(cls, LocalFileSystem) else names[0]
            path = cls._strip_protocol(url)
        else:
            family = protocol
    if family == "file":
        return "file", os.path.realpath(path)
    return family, "/".join(part for part in path.split("/") if part not in ("", "."))


def location_within(inner: str, outer: str, options: StorageOptions | None = None) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it, on the same storage.

    Compared by :func:`normalize_location`, path segment by segment (``s3://b/raw2`` is not
    inside ``s3://b/raw``). On object stores a key with ``..`` counts as inside when it is so
    either literally (as the store keeps it) or with ``..`` applied (as a person reads it): when
    in doubt, inside.
    """
    inner_family, inner_path = normalize_location(inner, options)
    outer_family, outer_path = normalize_location(outer, options)
    if inner_family != outer_family:
        return False
    if inner_family == "file":
        return _path_within(inner_path, outer_path, os.sep)
    return _path_within(inner_path, outer_path, "/") or _path_within(
        _apply_parent_segments(inner_path), _apply_parent_segments(outer_path), "/"
    )


def _path_within(inner: str, outer: str, separator: str) -> bool:
    if inner == outer or not outer or outer == separator:
        return True
    return inner.startswith(outer.rstrip(separator) + separator)


def _apply_parent_segments(path: str) -> str:
    """``path`` with each ``..`` removing the segment before it (never the first: the bucket)."""
    kept: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if len(kept) > 1:
                kept.pop()
        else:
            kept.append(part)
    return "/".join(kept)


# --- bounded reads -----------------------------------------------------------------------------


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
    return _bounded(url, options, max_bytes=max_bytes, head=None, timeout_s=timeout_s)


def read_head(
    url: str,
    n: int,
    options: StorageOptions | None = None,
    *,
    timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> bytes:
    """The first ``n`` bytes of the regular file at ``url`` (fewer if it is shorter).

    For sniffing the content of files whose name says nothing; same rules as
    :func:`read_bytes`, whatever the file's size.

    Raises:
        FileNotFoundError: Nothing is there.
        UnreadableFileError: Not a regular file, not readable, or not read within ``timeout_s``.
    """
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    return _bounded(url, options, max_bytes=n, head=n, timeout_s=timeout_s)


def _bounded(
    url: str,
    options: StorageOptions | None,
    *,
    max_bytes: int,
    head: int | None,
    timeout_s: float,
) -> bytes:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be at least 0, got {max_bytes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be above 0, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    if is_local(url):
        path = str(local_path(url))

        def read(job: _ReadJob) -> bytes:
            return _read_local(path, url, max_bytes=max_bytes, head=head, job=job)
    else:

        def read(job: _ReadJob) -> bytes:
            return _read_remote(url, options, max_bytes=max_bytes, head=head, deadline=deadline)

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


def _read_local(
    path: str, source: str, *, max_bytes: int, head: int | None, job: _ReadJob | None = None
) -> bytes:
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
        if head is None and info.st_size > max_bytes:
            raise UnreadableFileError(
                f"{info.st_size} bytes, more than the read limit of {max_bytes}", source=source
            )
        # Whole file: one byte more than the limit, to notice a file that grew meanwhile.
        wanted = max_bytes + 1 if head is None else head
        try:
            content = _read_descriptor(descriptor, info.st_size, wanted, job)
        except OSError as exc:
            _refuse_os_error(exc, source)
            raise
    finally:
        os.close(descriptor)
    if head is None:
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
    url: str,
    options: StorageOptions | None,
    *,
    max_bytes: int,
    head: int | None,
    deadline: float,
) -> bytes:
    """Read through fsspec: the size (``info``) is checked before any byte is fetched."""
    source = redact_url(url)
    fs, path = url_to_fs(url, options)
    if isinstance(fs, LocalFileSystem):
        return _read_local(path, source, max_bytes=max_bytes, head=head)
    timeout = _async_timeout(fs, deadline)
    fs.invalidate_cache(path)  # a listing cached earlier in this process may be stale
    info = fs.info(path, **timeout(fs.info))
    kind = info.get("type", "file")
    if kind != "file":
        what = "a folder" if kind == "directory" else f"a {kind}"
        raise UnreadableFileError(f"{what}, not a regular file", source=source)
    size = info.get("size")
    if head is not None:
        if size == 0 or head == 0:
            return b""
        end = head if size is None else min(head, int(size))
        return fs.cat_file(path, start=0, end=end, **timeout(fs.cat_file))
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


# --- fingerprints ------------------------------------------------------------------------------


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


# --- atomic writes -----------------------------------------------------------------------------


def write_bytes_atomic(
    url: str,
    content: bytes,
    options: StorageOptions | None = None,
    *,
    staging_dir: str | None = None,
    protected_root: str | None = None,
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

    Raises:
        UnsafePathError: The target or the staging folder lies inside ``protected_root``.
    """
    if protected_root is not None:
        _refuse_protected(url, protected_root, options)
        if staging_dir is not None:
            _refuse_protected(staging_dir, protected_root, options)
    if is_local(url):
        _write_local_atomic(local_path(url), content, staging_dir, protected_root)
        return
    fs, path = url_to_fs(url, options)
    if isinstance(fs, LocalFileSystem):
        _write_local_atomic(Path(path), content, staging_dir, protected_root)
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


def _write_local_atomic(
    target: Path, content: bytes, staging_dir: str | None, protected_root: str | None
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
            _write_local_atomic(target, content, None, protected_root)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
