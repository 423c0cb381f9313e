"""A run's cache of decoded images, so a fresh run decodes each image once.

``detect_faces`` decodes an image to run the model; ``mask_faces`` needs the same pixels moments
later. A flow run makes one cache and hands it to both tasks (an argument, never a process
global), so it lives and dies with the run; it is bounded in bytes and never persisted: pixels do
not cross task boundaries as results. Tasks given no cache decode again.

Masking takes a shard's images in the order detection put them, so when the cache is full it
keeps what it holds (needed soonest) and refuses the newest image, which its mask task decodes
again. Entries older than ``max_age_seconds`` (a mask task that never came) are dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from anon_tasks.imaging.decoded import DecodedImage

__all__ = ["DecodedCache"]

#: Default bound: a shard's decoded images wait here until its detection task ends, so the flow's
#: peak memory moves with this. 128 MB holds an average shard (32) of 1 MP images; images of a
#: larger shard are decoded again by masking (3-4 ms each): about 15 % of the WIDER dev set's
#: images over 2,000, for a peak 150 MB lower (docs/benchmarks.md).
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
#: An image waits seconds for its mask task, not minutes.
DEFAULT_MAX_AGE_SECONDS = 600.0


class DecodedCache:
    """A thread-safe, byte-bounded map from (url, content digest) to decoded frames.

    Keyed by the SHA-256 of the bytes the frames were decoded from: masking asks for the
    digest its detections were computed on, so it can only ever get those very pixels.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[DecodedImage, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, url: str, content_sha256: str, image: DecodedImage) -> bool:
        """Hold ``image`` for its mask task; False when it does not fit (it is not held)."""
        size = sum(frame.nbytes for frame in image.frames)
        now = self._clock()
        with self._lock:
            key = (url, content_sha256)
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            while self._items:
                _, (_, oldest_size, added) = next(iter(self._items.items()))
                if now - added <= self.max_age_seconds:
                    break
                self._items.popitem(last=False)
                self._bytes -= oldest_size
            if self._bytes + size > self.max_bytes:
                return False
            self._items[key] = (image, size, now)
            self._bytes += size
            return True

    def pop(self, url: str, content_sha256: str) -> DecodedImage | None:
        """The image decoded from the bytes with this digest (removing it), or None."""
        with self._lock:
            entry = self._items.pop((url, content_sha256), None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            return entry[0]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
