"""Progress reporting hooks: the flow says how far it is; a front end (the CLI) may listen."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ProgressListener", "listening", "report_progress"]

logger = logging.getLogger(__name__)

#: Called with (images done, images in total).
ProgressListener = Callable[[int, int], None]

_listeners: list[ProgressListener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener`` with progress while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def report_progress(done: int, total: int) -> None:
    """Tell every listener how many images are done; a failing listener never stops a run."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(done, total)
        except Exception:
            logger.debug("progress listener failed", exc_info=True)
