"""Which images the review page shows, in what order, and the candidates counted by score band.

Pure functions over manifest rows: nothing here reads an image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from anon_tasks.core.records import ImageStatus, ManifestRow

__all__ = ["ScoreBand", "pages_of", "review_order", "score_bands", "shown_rows"]

#: Width of the score bands between the floor and the threshold.
BAND_WIDTH = 0.1

T = TypeVar("T")


@dataclass(frozen=True)
class ScoreBand:
    """Candidates scored in ``(low, high]`` and the images holding them."""

    low: float
    high: float
    candidates: int
    images: int
    masked: bool

    @property
    def label(self) -> str:
        return f"{self.low:.2f} – {self.high:.2f}"


def _has_output(row: ManifestRow) -> bool:
    return row.output is not None and row.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)


def _order_key(row: ManifestRow) -> tuple[int, float, int, str]:
    """Near misses first (the highest, the most likely leak, first), then masked faces."""
    top_miss = max((face.score for face in row.near_misses), default=-1.0)
    if row.near_misses:
        return (0, -top_miss, -len(row.faces), row.source)
    if row.faces:
        return (1, 0.0, -len(row.faces), row.source)
    return (2, 0.0, 0, row.source)


def review_order(rows: Iterable[ManifestRow]) -> list[ManifestRow]:
    """The rows with an output, near misses first by their best score, then images with masked
    faces by face count, then the rest; by source path within each."""
    return sorted((row for row in rows if _has_output(row)), key=_order_key)


def shown_rows(rows: Iterable[ManifestRow], limit: int) -> tuple[list[ManifestRow], int]:
    """The first ``limit`` rows in review order, and how many rows with an output there are."""
    ordered = review_order(rows)
    return ordered[:limit], len(ordered)


def pages_of(items: Sequence[T], page_size: int) -> list[Sequence[T]]:
    """``items`` (rows, or anything kept beside them) cut into pages of at most ``page_size``;
    one empty page when there are none."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    return [items[start : start + page_size] for start in range(0, len(items), page_size)] or [[]]


def _band_edges(floor: float, threshold: float) -> list[float]:
    """``floor``, the multiples of ``BAND_WIDTH`` strictly between, ``threshold``."""
    low, high = min(floor, threshold), threshold
    steps = range(math.floor(low / BAND_WIDTH) + 1, math.ceil(high / BAND_WIDTH))
    inner = [round(step * BAND_WIDTH, 6) for step in steps]
    return [low, *(edge for edge in inner if low < edge < high), high]


def score_bands(rows: Iterable[ManifestRow], floor: float, threshold: float) -> list[ScoreBand]:
    """Near misses counted in bands of ``BAND_WIDTH`` from ``floor`` up to ``threshold``,
    highest first, after one band of the masked faces (above ``threshold``)."""
    edges = _band_edges(floor, threshold)
    bands = list(itertools.pairwise(edges))
    candidates = [0] * len(bands)
    images: list[set[str]] = [set() for _ in bands]
    masked_faces, masked_images = 0, 0
    for row in rows:
        if not _has_output(row):
            continue
        masked_faces += len(row.faces)
        masked_images += bool(row.faces)
        for face in row.near_misses:
            for index, (low, high) in enumerate(bands):
                if low < face.score <= high or (index == 0 and face.score <= low):
                    candidates[index] += 1
                    images[index].add(row.source)
                    break
    found = [
        ScoreBand(low, high, candidates[index], len(images[index]), masked=False)
        for index, (low, high) in enumerate(bands)
    ]
    masked = ScoreBand(threshold, 1.0, masked_faces, masked_images, masked=True)
    return [masked, *reversed(found)]
