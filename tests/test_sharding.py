"""Stable shards: growing a dataset moves no image between the other shards."""

from __future__ import annotations

import pytest

from anon_tasks.datasets.sharding import stable_shards


def shard(paths: list[str], size: int) -> list[list[str]]:
    ordered = sorted(paths)
    return stable_shards(ordered, ordered, size)


def test_every_item_once_in_order() -> None:
    paths = [f"img/{i:05d}.jpg" for i in range(1000)]
    shards = shard(paths, 32)
    assert [p for s in shards for p in s] == paths
    assert 1000 / 64 < len(shards) < 1000 / 16  # about 32 per shard
    assert max(len(s) for s in shards) <= 4 * 32


@pytest.mark.parametrize("new", ["img/00500x.jpg", "aaa.jpg", "zzz/last.png", "img/00000.jpeg"])
def test_adding_one_image_changes_one_shard(new: str) -> None:
    paths = [f"img/{i:05d}.jpg" for i in range(1000)]
    before = {tuple(s) for s in shard(paths, 32)}
    after = {tuple(s) for s in shard([*paths, new], 32)}
    changed = after - before
    assert len(changed) == 1  # only the shard that gained the image is new
    assert new in next(iter(changed))
    assert len(before - after) == 1


def test_size_one_is_one_image_per_shard() -> None:
    assert shard(["b", "a"], 1) == [["a"], ["b"]]


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        stable_shards([1], ["a"], 0)
