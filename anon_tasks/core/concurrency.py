"""Bounded, ordered parallel map: the pipeline stages' worker pools.

Decoding, masking and encoding release the GIL inside Pillow, OpenCV and numpy, so a few threads
overlap them with inference. ``ordered_map`` keeps at most ``ahead`` items in flight, so memory
stays bounded by the look-ahead (a few decoded images), never by the number of items.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["available_cores", "ordered_map", "pipeline_threads"]

In = TypeVar("In")
Out = TypeVar("Out")

#: Most threads one pipeline stage uses, whatever the core count.
MAX_STAGE_THREADS = 8


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pipeline_threads() -> int:
    """Threads for one CPU stage (decode, or mask and encode): half the usable cores, 1 to 8
    (the other half runs inference, or feeds the GPU)."""
    return max(1, min(MAX_STAGE_THREADS, available_cores() // 2))


def ordered_map(
    fn: Callable[[In], Out], items: Iterable[In], *, threads: int, ahead: int
) -> Iterator[Out]:
    """``fn`` over ``items`` on ``threads`` threads, results in input order.

    At most ``ahead`` calls are queued or running at any time; the next one is submitted as the
    consumer takes a result. Exceptions raised by ``fn`` are re-raised when their result is
    reached. Closing the iterator early cancels what has not started and waits for the rest.

    Example:
        >>> list(ordered_map(str.upper, ["a", "b"], threads=2, ahead=4))
        ['A', 'B']
    """
    if threads < 1 or ahead < 1:
        raise ValueError("threads and ahead must be at least 1")
    source = iter(items)
    pending: deque[Future[Out]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="anon-stage") as pool:
        try:
            for item in source:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    break
            while pending:
                result = pending.popleft().result()
                for item in source:
                    pending.append(pool.submit(fn, item))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()
