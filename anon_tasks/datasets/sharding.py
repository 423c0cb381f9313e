"""Stable shards: groups of images that do not move when the dataset grows.

A shard ends after every image whose path hash falls in a boundary bucket. The boundaries
depend only on each image itself, so adding, removing or changing one image changes only the
shard it falls in (split in two when the new image is itself a boundary; merged with its
neighbour when a removed image was one), and every other shard, and so its cache key, stays
the same.

Two ways to size them:

- by count (``target_size`` alone): a 1-in-``target_size`` bucket, so shards average
  ``target_size`` images, with a hard cap of ``4 * target_size``;
- by weight (``weights`` given, from file sizes: ``size_weight``): an image ends its shard with
  a probability proportional to its weight, so shards average ``target_size`` *typical* images'
  worth of work: many more small files, fewer large ones. A shard is also closed once its
  weight reaches ``4 * target_size``. Each task run then carries about the same work, and a
  dataset of thumbnails pays Prefect's per-task cost a few times, not once per 32 files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

__all__ = [
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "TYPICAL_IMAGE_BYTES",
    "partition_of",
    "size_weight",
    "stable_shards",
]

_T = TypeVar("_T")

#: Bytes of a typical dataset image (a 1024-px JPEG): weight 1.
TYPICAL_IMAGE_BYTES = 128 * 1024
#: However small, a file still costs a read, a decode, a model run and a write.
MIN_WEIGHT = 1 / 32
#: However large, an image is decoded at most to the pixel limit and the model sees it scaled.
MAX_WEIGHT = 4.0
_HASH_RANGE = 2**64


def _path_hash(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "big")


def size_weight(size_bytes: int) -> float:
    """An image's work relative to a typical one, from its file size (clamped)."""
    return min(MAX_WEIGHT, max(MIN_WEIGHT, size_bytes / TYPICAL_IMAGE_BYTES))


def partition_of(path: str, count: int) -> int:
    """The partition (0 to ``count - 1``) an image belongs to, from its path alone.

    Every process computes the same answer, so partitions of one dataset never overlap, and an
    image stays in its partition however the dataset grows.
    """
    # A different mix of the hash than the shard boundaries use, so the two are independent.
    return (_path_hash(path) // 7919) % count


def stable_shards(
    items: Sequence[_T],
    paths: Sequence[str],
    target_size: int,
    weights: Sequence[float] | None = None,
) -> list[list[_T]]:
    """Split ``items`` (sorted by ``paths``) into content-defined shards.

    Args:
        items: The values to group, in the order of ``paths``.
        paths: One stable identifier per item (its relative path), sorted.
        target_size: Average shard size, in items or (with ``weights``) in weight; 1 puts every
            item in its own shard.
        weights: Each item's work relative to a typical item (``size_weight``), or None to
            count items.
    """
    if target_size < 1:
        raise ValueError("target_size must be at least 1")
    if weights is None:
        weights = [1.0] * len(items)
        boundary = [_path_hash(path) % target_size == 0 for path in paths]
    else:
        boundary = [
            _path_hash(path) < weight / target_size * _HASH_RANGE
            for path, weight in zip(paths, weights, strict=True)
        ]
    cap = 4 * target_size
    shards: list[list[_T]] = []
    current: list[_T] = []
    carried = 0.0
    for item, ends, weight in zip(items, boundary, weights, strict=True):
        current.append(item)
        carried += weight
        if target_size == 1 or ends or carried >= cap:
            shards.append(current)
            current, carried = [], 0.0
    if current:
        shards.append(current)
    return shards
