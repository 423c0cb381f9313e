"""Stable shards: groups of images that do not move when the dataset grows.

A shard ends after every image whose path hash falls in a 1-in-``target_size`` bucket. The
boundaries depend only on each path itself, so adding, removing or changing one image changes
only the shard it falls in (split in two when the new image is itself a boundary; merged with
its neighbour when a removed image was one), and every other shard, and so its cache key, stays
the same. Shards average ``target_size`` images;
a hard cap of ``4 * target_size`` bounds the worst case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["partition_of", "stable_shards"]

_T = TypeVar("_T")


def _path_hash(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "big")


def _is_boundary(path: str, target_size: int) -> bool:
    return _path_hash(path) % target_size == 0


def partition_of(path: str, count: int) -> int:
    """The partition (0 to ``count - 1``) an image belongs to, from its path alone.

    Every process computes the same answer, so partitions of one dataset never overlap, and an
    image stays in its partition however the dataset grows.
    """
    # A different mix of the hash than the shard boundaries use, so the two are independent.
    return (_path_hash(path) // 7919) % count


def stable_shards(items: Sequence[_T], paths: Sequence[str], target_size: int) -> list[list[_T]]:
    """Split ``items`` (sorted by ``paths``) into content-defined shards.

    Args:
        items: The values to group, in the order of ``paths``.
        paths: One stable identifier per item (its relative path), sorted.
        target_size: Average shard size; 1 puts every item in its own shard.
    """
    if target_size < 1:
        raise ValueError("target_size must be at least 1")
    cap = 4 * target_size
    shards: list[list[_T]] = []
    current: list[_T] = []
    for item, path in zip(items, paths, strict=True):
        current.append(item)
        if target_size == 1 or _is_boundary(path, target_size) or len(current) >= cap:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards
