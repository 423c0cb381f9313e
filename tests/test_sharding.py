"""Stable shards: growing a dataset moves no image between the other shards."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anon_tasks.datasets.sharding import (
    MAX_WEIGHT,
    TYPICAL_IMAGE_BYTES,
    size_weight,
    stable_shards,
)


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


def weighted(paths: list[str], sizes: dict[str, int], target: int = 32) -> list[list[str]]:
    ordered = sorted(paths)
    return stable_shards(ordered, ordered, target, [size_weight(sizes[p]) for p in ordered])


def test_small_files_travel_in_larger_shards() -> None:
    paths = [f"img/{i:05d}.jpg" for i in range(4000)]
    thumbs = weighted(paths, dict.fromkeys(paths, 3_000))  # 3 KB: weight 1/32
    typical = weighted(paths, dict.fromkeys(paths, TYPICAL_IMAGE_BYTES))
    large = weighted(paths, dict.fromkeys(paths, 50 * TYPICAL_IMAGE_BYTES))
    assert len(thumbs) < 4000 / 256  # about 1,024 per shard
    assert 4000 / 64 < len(typical) < 4000 / 16  # about 32, as by count
    assert len(large) > 4000 / 16  # about 8
    assert max(len(s) for s in thumbs) <= 4 * 32 * 32  # the weight cap
    assert max(len(s) for s in large) <= 4 * 32 / MAX_WEIGHT


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.text("abcdefgh/._-0123", min_size=1, max_size=12), min_size=1, unique=True),
    sizes=st.lists(st.integers(0, 20 * TYPICAL_IMAGE_BYTES), min_size=1),
    new=st.text("abcdefgh/._-0123", min_size=1, max_size=12),
    new_size=st.integers(0, 20 * TYPICAL_IMAGE_BYTES),
    target=st.sampled_from([1, 2, 8, 32]),
)
def test_weighted_shards_keep_every_item_and_move_only_their_own(
    names: list[str], sizes: list[int], new: str, new_size: int, target: int
) -> None:
    """Every item once, in order; adding one item leaves all shards but its own as they were
    (up to a weight cap, which can move the boundaries after it: never with typical sizes)."""
    size_of = {name: sizes[i % len(sizes)] for i, name in enumerate(names)}
    before = weighted(names, size_of, target)
    assert [p for s in before for p in s] == sorted(names)
    assert all(sum(size_weight(size_of[p]) for p in s[:-1]) < 4 * target for s in before)
    if new in size_of:
        return
    after = weighted([*names, new], {**size_of, new: new_size}, target)
    weight_of = {**size_of, new: new_size}
    capped = any(sum(size_weight(weight_of[p]) for p in s) >= 4 * target for s in [*before, *after])
    if not capped:
        changed = {tuple(s) for s in after} - {tuple(s) for s in before}
        assert 1 <= len(changed) <= 2  # its shard, split in two when it is a boundary
        gained = [s for s in changed if new in s]
        assert len(gained) == 1
        # A split: the other new shard is the rest of the old one, ending where it ended.
        assert all(new in s or s[-1] in {t[-1] for t in before} for s in changed)
