"""The first bytes of a file, for sniffing what it holds: regular files only, never blocking.

This is the one way a file's head is read (the dataset listing sniffs files whose name says
nothing). Locally the file is opened with ``O_NONBLOCK`` and ``O_NOFOLLOW`` and checked with
``fstat``: a FIFO swapped in after listing opens at once and is refused, a link swapped in is
refused by the open. On an object store it is one ranged read of a size the listing already
knows (no ``info`` request), bounded in time on async filesystems (S3). Errors are the
operating system's own (``OSError`` with its ``strerror``), so a caller can say why in words.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Final

from anon_tasks.core.errors import UnreadableFileError

__all__ = ["REMOTE_HEAD_TIMEOUT_S", "read_local_head", "read_object_head"]

#: Longest wait for the first bytes of one object on an object store.
REMOTE_HEAD_TIMEOUT_S: Final = 30.0

_HEAD_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def read_local_head(path: bytes | str, limit: int) -> bytes:
    """The first ``limit`` bytes of a local regular file (fewer if it is shorter).

    Args:
        path: The file; its last component is not followed if it is a link.
        limit: How many bytes to read at most.

    Raises:
        UnreadableFileError: It is not a regular file (a FIFO, folder, device...).
        OSError: It cannot be opened or read (a link, no permission, gone).
    """
    handle = os.open(path, _HEAD_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise UnreadableFileError("not a regular file", source=_shown(path))
        chunks: list[bytes] = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(handle, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def read_object_head(
    fs: Any, path: str, size: int, limit: int, *, timeout_s: float = REMOTE_HEAD_TIMEOUT_S
) -> bytes:
    """The first bytes of an object: one ranged read of ``min(limit, size)`` bytes.

    Args:
        fs: The fsspec filesystem holding it.
        path: Its path on ``fs``.
        size: Its size, as the listing gave it (an empty object is not fetched).
        limit: How many bytes to read at most.
        timeout_s: Longest wait on an async filesystem (fsspec cancels the request).
    """
    end = min(limit, size)
    if end <= 0:
        return b""  # an empty object: a ranged GET of it is an error on S3
    if getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:
        from fsspec.asyn import sync

        return sync(fs.loop, fs._cat_file, path, start=0, end=end, timeout=timeout_s)
    return fs.cat_file(path, start=0, end=end)


def _shown(path: bytes | str) -> str:
    """A path as an error may show it: bad bytes and control characters as ``\\xNN``."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        raw = str(path).encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) <= 159 else c for c in text)
