"""Devices for inference, and host-level leases so two runs never share one.

The devices a process may use come from ``ANON_TASKS_DEVICES`` (a comma-separated list such as
``cuda:0,cuda:1`` or, for tests and CPU-only hosts, logical ``cpu:0,cpu:1``), else from the CUDA
devices this process can see, else a single ``cpu``. A GPU worker started by
``anonymize-workers`` sees one device through ``CUDA_VISIBLE_DEVICES`` and so lists ``cuda:0``.

A lease is an exclusive lock on a file named after the device in a folder shared by every
process on the host (``ANON_TASKS_LOCK_DIR``, default ``<tmp>/anon-tasks-device-locks``): a
``flock`` on POSIX, a ``msvcrt.locking`` byte lock on Windows. The operating system releases it
when the holder exits, crashed or not, so a dead run never keeps a device. Where neither exists,
leases exclude only the runs of one process (a warning says so once).

A device has one lease by default. ``ANON_TASKS_DEVICE_SLOTS=N`` lets up to N runs hold one at
once (a file per slot): several processes feeding one GPU keep it busier than one can, since one
process's Python holds the GIL for part of every image (see docs/benchmarks.md).
``anonymize-workers --limit N`` sets it for the runs of its workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from anon_tasks.core.errors import ConfigurationError, DeviceBusyError

__all__ = [
    "DEVICES_ENV",
    "SLOTS_ENV",
    "available_devices",
    "device_lease",
    "device_slots",
    "visible_cuda_device_count",
]

logger = logging.getLogger(__name__)

DEVICES_ENV = "ANON_TASKS_DEVICES"
LOCK_DIR_ENV = "ANON_TASKS_LOCK_DIR"
SLOTS_ENV = "ANON_TASKS_DEVICE_SLOTS"
#: Most runs that may share one device.
MAX_SLOTS = 64
_POLL_SECONDS = 0.05


def visible_cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 when CUDA cannot load)."""
    from anon_tasks.detection.runtime import cuda_unavailable_reason

    if cuda_unavailable_reason() is not None:
        return 0
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "cudart64_13.dll"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cudart.cudaGetDeviceCount(ctypes.byref(count)) == 0:
            return count.value
        return 0
    return 0


def available_devices(requested: str = "auto") -> list[str]:
    """The devices shards may be spread over, for a ``device`` setting.

    An explicit device (``cpu``, ``cuda:1``) is used alone; ``auto`` lists ``ANON_TASKS_DEVICES``
    or every visible CUDA device, else ``cpu``; ``cuda`` lists the visible CUDA devices.
    """
    if requested not in ("auto", "cuda"):
        return [requested]
    configured = os.environ.get(DEVICES_ENV, "").strip()
    if configured:
        return [part.strip().lower() for part in configured.split(",") if part.strip()]
    count = visible_cuda_device_count()
    if count:
        return [f"cuda:{index}" for index in range(count)]
    return ["cuda"] if requested == "cuda" else ["cpu"]


def _lock_dir() -> Path:
    folder = Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "anon-tasks-device-locks"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def device_slots() -> int:
    """How many runs may hold a lease on one device at once (``ANON_TASKS_DEVICE_SLOTS``).

    Raises:
        ConfigurationError: The variable is not a whole number from 1 to ``MAX_SLOTS``.
    """
    raw = os.environ.get(SLOTS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_SLOTS:
        raise ConfigurationError(
            f"{SLOTS_ENV}={raw!r}: expected a whole number from 1 to {MAX_SLOTS}", field=SLOTS_ENV
        )
    return int(raw)


def _lock_file(device: str, slot: int = 0) -> Path:
    # CUDA_VISIBLE_DEVICES renumbers devices per process; lock the physical one.
    name = device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if device.startswith("cuda:") and visible:
        physical = visible.split(",")
        index = int(device.split(":")[1])
        if index < len(physical):
            name = f"cuda:{physical[index].strip()}"
    suffix = f".slot{slot}" if slot else ""
    return _lock_dir() / (name.replace(":", "-") + suffix + ".lock")


class _FileLock(Protocol):
    """A non-blocking exclusive lock on an open lock file."""

    def acquire(self, handle: BinaryIO) -> bool:
        """Take the lock; False when another holder has it."""
        ...

    def release(self, handle: BinaryIO) -> None:
        """Give the lock back."""
        ...


class _FlockLock:
    """POSIX ``flock``: host-wide, released by the kernel when the holder exits."""

    def acquire(self, handle: BinaryIO) -> bool:
        import fcntl

        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self, handle: BinaryIO) -> None:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _MsvcrtLock:
    """Windows byte-range lock on the file's first byte: host-wide, released by the system when
    the holder's handle closes or the holder exits."""

    def acquire(self, handle: BinaryIO) -> bool:
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def release(self, handle: BinaryIO) -> None:
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


class _ProcessLock:
    """Fallback without OS file locks: excludes the runs of this process only."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._guard = threading.Lock()

    def acquire(self, handle: BinaryIO) -> bool:
        with self._guard:
            if str(handle.name) in self._held:
                return False
            self._held.add(str(handle.name))
            return True

    def release(self, handle: BinaryIO) -> None:
        with self._guard:
            self._held.discard(str(handle.name))


@functools.cache
def _file_lock() -> _FileLock:
    """The platform's file lock: ``flock``, else ``msvcrt.locking``, else per process."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        pass
    else:
        return _FlockLock()
    try:
        import msvcrt  # noqa: F401
    except ImportError:
        pass
    else:
        return _MsvcrtLock()
    logger.warning(
        "no file locks on this platform (neither fcntl nor msvcrt): device leases exclude the "
        "runs of one process only, so runs in other processes may share a device"
    )
    return _ProcessLock()


@contextlib.contextmanager
def device_lease(candidates: Sequence[str], *, timeout_seconds: float = 3600.0) -> Iterator[str]:
    """Hold a lease on the first free device of ``candidates``; yields its name.

    Candidates are tried in order without waiting, each in its ``device_slots()`` slots; when all
    are busy, they are polled until one frees up or ``timeout_seconds`` pass (then
    ``DeviceBusyError``). The lease ends with the block, or with the process.

    Raises:
        ValueError: ``candidates`` is empty.
        DeviceBusyError: Every slot of every candidate stayed busy for ``timeout_seconds``.
    """
    if not candidates:
        raise ValueError("no device to lease")
    deadline = time.monotonic() + timeout_seconds
    # Every device's first slot before any device's second: runs spread before they share.
    slots = [(device, slot) for slot in range(device_slots()) for device in candidates]
    handles: dict[tuple[str, int], BinaryIO] = {}
    lock = _file_lock()
    try:
        while True:
            for device, slot in slots:
                handle = handles.get((device, slot))
                if handle is None:
                    handle = handles[device, slot] = _lock_file(device, slot).open("a+b")
                if not lock.acquire(handle):
                    continue
                try:
                    logger.debug("leased %s (slot %d)", device, slot)
                    yield device
                finally:
                    lock.release(handle)
                return
            if time.monotonic() >= deadline:
                raise DeviceBusyError(f"every device of {list(candidates)} stayed busy")
            time.sleep(_POLL_SECONDS)
    finally:
        for handle in handles.values():
            handle.close()
