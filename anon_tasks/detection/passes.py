"""The quality modes' passes over one image: tiles, overview, scaled, mirrored, merged.

Each pass runs the model through a ``RunOne`` callable (one image, one score floor; the
detector's own run) and maps the detections back to the image's pixels; the passes a quality
mode asks for are merged by one suppression. The budgets below are read when a pass runs, so
tests may scale them down.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from anon_tasks.core.settings import Quality
from anon_tasks.detection.boxes import (
    FaceArrays,
    merge_detections,
    mirrored,
    penalised,
    rescaled,
    shifted,
    smaller_than,
)
from anon_tasks.detection.centerface import SIDE_MULTIPLE

__all__ = [
    "BALANCED_PIXEL_BUDGET",
    "EXTRA_PASS_PENALTY",
    "FAST_MAX_SIDE",
    "OVERVIEW_PIXEL_BUDGET",
    "SMALL_FACE_MAX_PX",
    "TILE_OVERLAP_PX",
    "TILE_SIDE_PX",
    "UPSCALED_TILE_OVERLAP_PX",
    "UPSCALED_TILE_SIDE_PX",
    "RunOne",
    "detect_passes",
    "fits_one_pass",
]

#: One model run over one image: its detections scoring above the floor, in its own pixels.
RunOne = Callable[[np.ndarray, float], FaceArrays]

#: Above this many pixels, balanced mode tiles instead of running one giant inference. One
#: CPU inference holds about 190 MB per megapixel (benchmarks/large_image.py), so an image just
#: under the budget peaks near 7.5 GB; tiles keep the peak near that of one 1 MP tile.
BALANCED_PIXEL_BUDGET = 40_000_000
#: Size of the whole-image pass that goes with tiles, and the most thorough mode's half-size
#: pass may take: faces larger than the tile overlap, which tiles cut, are found whole in it.
#: At 4 MP a face of 128 px (the overlap) in a 50 MP photo is still 36 px there.
OVERVIEW_PIXEL_BUDGET = 4_000_000
#: Longest side fast mode runs the model on.
FAST_MAX_SIDE = 1024
#: Tile side and overlap in pixels of the (resized) network input.
TILE_SIDE_PX = 1024
TILE_OVERLAP_PX = 128
#: Tile side and overlap of thorough mode's 2x-upscaled pass (network input pixels): smaller
#: tiles than balanced's, so that the tiles it runs (those holding a small-face candidate) cover
#: little more than the candidates' surroundings; the wider overlap keeps faces near a border
#: whole in some tile (docs/accuracy.md).
UPSCALED_TILE_SIDE_PX = 512
UPSCALED_TILE_OVERLAP_PX = 192
#: Score taken off detections of thorough mode's upscaled and mirrored passes.
EXTRA_PASS_PENALTY = 0.1
#: The upscaled pass keeps faces smaller than this (original pixels, longer side).
SMALL_FACE_MAX_PX = 64


def fits_one_pass(height: int, width: int) -> bool:
    """Whether an image is run whole at full resolution (at most ``BALANCED_PIXEL_BUDGET``
    pixels), as the reference does; larger ones are tiled with an overview pass."""
    return height * width <= BALANCED_PIXEL_BUDGET


def detect_passes(run: RunOne, rgb: np.ndarray, quality: Quality, score_floor: float) -> FaceArrays:
    """Faces above ``score_floor`` with the passes ``quality`` asks for, merged.

    ``balanced`` is exactly one run for images under ``BALANCED_PIXEL_BUDGET``, and above it
    overlapping tiles (small faces) with a whole-image pass scaled down to
    ``OVERVIEW_PIXEL_BUDGET`` (faces larger than the tiles' overlap). ``fast`` runs on the
    image scaled to at most ``FAST_MAX_SIDE`` per side. ``thorough`` adds a half-size pass
    (faces too large for the receptive field), 2x-upscaled overlapping tiles (faces of a
    few pixels) and a mirrored pass.

    Args:
        run: The model run the passes are made of.
        rgb: Upright image, uint8, HxWx3, RGB channel order.
        quality: Which passes to make.
        score_floor: Lowest score kept (the extra passes' penalty is added here).
    """
    height, width = rgb.shape[:2]
    if quality is Quality.FAST:
        scale = min(1.0, FAST_MAX_SIDE / max(height, width))
        return _detect_scaled(run, rgb, scale, score_floor)
    full = (
        run(rgb, score_floor)
        if fits_one_pass(height, width)
        else merge_detections(
            [
                _detect_tiles(run, rgb, 1.0, score_floor),
                _detect_overview(run, rgb, score_floor),
            ]
        )
    )
    if quality is Quality.BALANCED:
        return full
    # Extra passes add faces the reference pass misses, and some false alarms: their scores
    # are lowered by EXTRA_PASS_PENALTY, and the upscaled pass keeps only small faces (large
    # ones are the full-resolution pass's job). Tuned on the WIDER dev set.
    # Upscaled tiles run only where the full-resolution pass already sees a small-face
    # candidate (above the floor), in small tiles: on the WIDER dev set recall stays within 0.1
    # point of upscaling everything, for under half the cost (docs/accuracy.md).
    upscaled = smaller_than(
        _detect_tiles(
            run,
            rgb,
            2.0,
            score_floor + EXTRA_PASS_PENALTY,
            near=smaller_than(full, SMALL_FACE_MAX_PX),
            side_px=min(UPSCALED_TILE_SIDE_PX, TILE_SIDE_PX),  # never above a tile
            overlap_px=UPSCALED_TILE_OVERLAP_PX,
        ),
        SMALL_FACE_MAX_PX,
    )
    parts = [full, penalised(upscaled, EXTRA_PASS_PENALTY)]
    # Half size, or smaller where that would exceed the overview's budget; above the
    # balanced budget the overview pass is already among the parts.
    if min(height, width) >= 4 * SIDE_MULTIPLE and fits_one_pass(height, width):
        half = _overview_scale(height, width, largest=0.5)
        parts.append(_detect_scaled(run, rgb, half, score_floor))
    if fits_one_pass(height, width):
        found = run(np.ascontiguousarray(rgb[:, ::-1]), score_floor + EXTRA_PASS_PENALTY)
        parts.append(penalised(mirrored(found, width), EXTRA_PASS_PENALTY))
    return merge_detections(parts)


def _overview_scale(height: int, width: int, largest: float) -> float:
    """The scale, at most ``largest``, that brings an image within ``OVERVIEW_PIXEL_BUDGET``."""
    return min(largest, math.sqrt(OVERVIEW_PIXEL_BUDGET / (height * width)))


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels overlapping by ``overlap`` along ``length``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _detect_scaled(run: RunOne, rgb: np.ndarray, scale: float, score_floor: float) -> FaceArrays:
    """The image resized by ``scale``, detections in the image's own pixels."""
    if scale == 1.0:
        return run(rgb, score_floor)
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return rescaled(run(resized, score_floor), size[0] / width, size[1] / height)


def _detect_overview(run: RunOne, rgb: np.ndarray, score_floor: float) -> FaceArrays:
    """The whole image scaled down to ``OVERVIEW_PIXEL_BUDGET`` pixels."""
    height, width = rgb.shape[:2]
    return _detect_scaled(run, rgb, _overview_scale(height, width, largest=1.0), score_floor)


def _detect_tiles(
    run: RunOne,
    rgb: np.ndarray,
    scale: float,
    score_floor: float,
    near: FaceArrays | None = None,
    side_px: int | None = None,
    overlap_px: int | None = None,
) -> FaceArrays:
    """Overlapping tiles, each resized by ``scale``; memory bounded by the tile size.

    With ``near``, only the tiles holding the centre of one of those boxes (image pixels) run.
    ``side_px`` and ``overlap_px`` are in network input pixels (default: ``TILE_SIDE_PX`` and
    ``TILE_OVERLAP_PX``, read when called).
    """
    height, width = rgb.shape[:2]
    tile = max(SIDE_MULTIPLE, int((TILE_SIDE_PX if side_px is None else side_px) / scale))
    overlap = int((TILE_OVERLAP_PX if overlap_px is None else overlap_px) / scale)
    centres = None
    if near is not None:
        centres = (near.xyxy[:, :2] + near.xyxy[:, 2:]) / 2
    parts = []
    for y in _tile_starts(height, tile, overlap):
        for x in _tile_starts(width, tile, overlap):
            if centres is not None and not _any_inside(centres, x, y, tile):
                continue
            crop = np.ascontiguousarray(rgb[y : y + tile, x : x + tile])
            found = _detect_scaled(run, crop, scale, score_floor)
            parts.append(shifted(found, x, y))
    return merge_detections(parts)


def _any_inside(centres: np.ndarray, x: int, y: int, tile: int) -> bool:
    """Whether any (cx, cy) point lies in the tile at ``x``, ``y`` (``tile`` pixels a side)."""
    inside = (
        (centres[:, 0] >= x)
        & (centres[:, 0] < x + tile)
        & (centres[:, 1] >= y)
        & (centres[:, 1] < y + tile)
    )
    return bool(inside.any())
