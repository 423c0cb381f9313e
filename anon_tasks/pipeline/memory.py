"""Keep a long run's resident memory flat: large freed buffers go back to the OS.

glibc's malloc serves buffers above its mmap threshold with their own mappings, returned to the
OS when freed. The threshold starts at 128 KiB but rises (up to 32 MiB) each time such a buffer
is freed, so after the first few images, decoded pixels, encoded files and model inputs (1 to
10 MB each) are carved from the heaps of the threads that touch them and stay there, fragmented:
the process's peak grows with the number of images seen. Fixing the threshold at 1 MiB keeps
every buffer of that size on its own mapping (measured with ``benchmarks/throughput.py
--memory``: see docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

__all__ = ["MMAP_THRESHOLD_BYTES", "limit_heap_growth"]

logger = logging.getLogger(__name__)

#: Buffers from this size on get their own mapping.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

_lock = threading.Lock()
_applied: list[bool] = []


def limit_heap_growth() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES`` for this process, once.

    Returns:
        True when the setting is in effect; False off glibc (musl, macOS, Windows), where
        nothing is changed.
    """
    with _lock:
        if not _applied:
            _applied.append(_set_mmap_threshold())
        return _applied[0]


def _set_mmap_threshold() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    logger.debug("malloc mmap threshold %s", "fixed at 1 MiB" if done else "left as it was")
    return done
