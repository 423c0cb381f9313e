"""A small in-process cache of decoded images, so a fresh run decodes each image once.

``detect_faces`` decodes an image to run the model; ``mask_faces`` needs the same pixels moments
later in the same process. The cache holds them in between, bounded in bytes (oldest dropped
first), and is never persisted: pixels do not cross task boundaries as results.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from anon_tasks.codec import DecodedImage

__all__ = ["DecodedCache", "decoded_cache"]

#: Default bound: a few shards of 1-2 MP images.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class DecodedCache:
    """A thread-safe, byte-bounded map from (url, fingerprint) to decoded frames."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[DecodedImage, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, url: str, fingerprint: str, image: DecodedImage) -> None:
        size = sum(frame.nbytes for frame in image.frames)
        if size > self.max_bytes:
            return
        with self._lock:
            key = (url, fingerprint)
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (image, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def pop(self, url: str, fingerprint: str) -> DecodedImage | None:
        """The cached image (removing it), or None."""
        with self._lock:
            entry = self._items.pop((url, fingerprint), None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            return entry[0]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


#: The process-wide cache shared by the tasks.
decoded_cache = DecodedCache()
