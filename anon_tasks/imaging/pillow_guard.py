"""Pillow as this package runs it: HEIF registered, calls made under process-wide switches.

Importing this module registers pillow-heif's HEIF opener and saver with Pillow.

Pillow's pixel limit, truncated-image loading and the warning filters are process-wide. The
first thread into ``pillow_guard`` sets them, the last one out restores them, so decoding and
encoding run in parallel threads (Pillow releases the GIL while it decodes) and the switches
are never left changed:

* Pillow's decompression-bomb limit is lifted: the caller's ``max_pixels``, checked from the
  headers before any pixel is decoded, is the one limit that applies.
* Truncated files fail rather than come out half grey.
* Warnings raised by a guarded thread are recorded for that thread (and logged by the caller
  with ``log_warnings``); other threads' warnings go where they went.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pillow_heif
from PIL import Image, ImageFile

__all__ = ["describe", "log_warnings", "pillow_guard"]

logger = logging.getLogger(__name__)

pillow_heif.register_heif_opener()

_GUARD_LOCK = threading.Lock()
_guard_holders = 0
_guard_saved: tuple[contextlib.AbstractContextManager[Any], Any, bool] | None = None
_guard_thread = threading.local()


@contextlib.contextmanager
def pillow_guard() -> Iterator[list[warnings.WarningMessage]]:
    """Lift Pillow's pixel limit, forbid truncated loading and record this thread's warnings.

    The switches are restored when the last thread inside leaves.

    Yields:
        The list this thread's warnings are appended to while inside.
    """
    global _guard_holders, _guard_saved
    with _GUARD_LOCK:
        if _guard_holders == 0:
            filters = warnings.catch_warnings()
            filters.__enter__()
            # Recorded warnings are logged by the caller; "always" keeps repeats from being lost.
            warnings.simplefilter("always")
            original_show = warnings.showwarning
            warnings.showwarning = functools.partial(_route_warning, original_show)
            _guard_saved = (filters, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            # Our own max_pixels check replaces Pillow's, which would refuse or warn at its own
            # fixed limit; truncated files must fail rather than come out half grey.
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _guard_holders += 1
    caught: list[warnings.WarningMessage] = []
    outer = getattr(_guard_thread, "caught", None)
    _guard_thread.caught = caught
    try:
        yield caught
    finally:
        _guard_thread.caught = outer
        with _GUARD_LOCK:
            _guard_holders -= 1
            if _guard_holders == 0 and _guard_saved is not None:
                filters, limit, truncated = _guard_saved
                _guard_saved = None
                Image.MAX_IMAGE_PIXELS = limit
                ImageFile.LOAD_TRUNCATED_IMAGES = truncated
                filters.__exit__(None, None, None)


def log_warnings(caught: Sequence[warnings.WarningMessage], source: str) -> None:
    """Log the warnings a guarded call recorded, each as a warning naming ``source``."""
    for item in caught:
        logger.warning("%s: %s: %s", source, item.category.__name__, item.message)


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` (or ``Type`` alone), for error messages and logs."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _route_warning(
    original: Callable[..., None],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Keep a warning for the guarded thread that raised it; others go where they went."""
    caught = getattr(_guard_thread, "caught", None)
    if caught is None:
        original(message, category, filename, lineno, file, line)
        return
    caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
