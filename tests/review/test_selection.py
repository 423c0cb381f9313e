"""Which images the review shows, in what order, and the counts by score band."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from anon_tasks.core.records import ImageStatus
from anon_tasks.review.selection import pages_of, review_order, score_bands, shown_rows
from tests.review.rows import FLOOR, THRESHOLD, row, rows


def test_near_misses_come_first_the_likeliest_leak_first() -> None:
    ordered = review_order(
        [
            row("clean.png"),
            row("masked.png", faces=(0.9,)),
            row("low.png", misses=(0.15,)),
            row("high.png", faces=(0.8,), misses=(0.38, 0.2)),
            row("failed.png", status=ImageStatus.FAILED, misses=(0.39,)),
        ]
    )
    assert [r.output for r in ordered] == ["high.png", "low.png", "masked.png", "clean.png"]


def test_bands_count_each_near_miss_once_and_name_a_lower_threshold() -> None:
    bands = score_bands(
        [row("a.png", faces=(0.9, 0.5), misses=(0.35, 0.31, 0.12)), row("b.png", misses=(0.2,))],
        FLOOR,
        THRESHOLD,
    )
    # Scores fall in (low, high]: 0.2 is in the lowest band.
    assert [(b.label, b.candidates, b.images, b.masked) for b in bands] == [
        ("0.40 – 1.00", 2, 1, True),
        ("0.30 – 0.40", 2, 1, False),
        ("0.20 – 0.30", 0, 0, False),
        ("0.10 – 0.20", 2, 2, False),
    ]


@pytest.mark.parametrize(
    ("threshold", "edges"),
    [
        (0.4, [0.1, 0.2, 0.3, 0.4]),
        (0.35, [0.1, 0.2, 0.3, 0.35]),
        (0.1, [0.1, 0.1]),
        (0.05, [0.05, 0.05]),
    ],
)
def test_band_edges_run_from_the_floor_to_the_threshold(threshold, edges) -> None:
    bands = score_bands([], min(FLOOR, threshold), threshold)
    found = sorted({b.low for b in bands if not b.masked} | {b.high for b in bands if not b.masked})
    assert found == sorted(set(edges))


@settings(max_examples=80, deadline=None)
@given(rows())
def test_every_near_miss_of_a_shown_image_is_in_exactly_one_band(made) -> None:
    bands = score_bands(made, FLOOR, THRESHOLD)
    with_output = review_order(made)
    assert sum(b.candidates for b in bands if not b.masked) == sum(
        len(r.near_misses) for r in with_output
    )
    masked = next(b for b in bands if b.masked)
    assert masked.candidates == sum(len(r.faces) for r in with_output)
    for band in bands:
        assert band.images <= len(with_output)


@settings(max_examples=80, deadline=None)
@given(rows())
def test_order_puts_every_image_with_near_misses_first_highest_score_first(made) -> None:
    ordered = review_order(made)
    assert all(r.output is not None for r in ordered)
    flags = [bool(r.near_misses) for r in ordered]
    assert flags == sorted(flags, reverse=True)
    tops = [max(f.score for f in r.near_misses) for r in ordered if r.near_misses]
    assert tops == sorted(tops, reverse=True)


@settings(max_examples=60, deadline=None)
@given(rows(max_size=60))
def test_pages_are_bounded_and_keep_every_shown_row_once(made) -> None:
    shown, total = shown_rows(made, limit=25)
    assert len(shown) == min(25, total)
    pages = pages_of(shown, 10)
    assert all(len(page) <= 10 for page in pages)
    assert [r for page in pages for r in page] == shown
