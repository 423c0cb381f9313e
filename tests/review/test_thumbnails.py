"""Thumbnails show the masked output with its masks and near misses outlined, nothing else."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.faces import Face
from anon_tasks.core.records import ManifestFace
from anon_tasks.core.settings import AnonymizeMethod, MaskSettings
from anon_tasks.imaging.masking import mask_faces
from anon_tasks.review.thumbnails import (
    MASK_RGB,
    NEAR_MISS_RGB,
    TILE_GAP_PX,
    TILE_PX,
    contact_sheet,
    thumbnail,
    tile_origin,
)
from tests.faces import ASTRONAUT_FACE_XYXY
from tests.review.rows import row

SOLID = MaskSettings(method=AnonymizeMethod.SOLID)
#: An unmasked region of the astronaut photo (the flag on her shoulder), as a near miss.
MISS_XYXY = (330.0, 330.0, 400.0, 400.0)


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def _near(tile: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    return (np.abs(tile.astype(int) - np.array(colour)).max(axis=2) <= tolerance).astype(bool)


@pytest.fixture(scope="module")
def masked_astronaut(astronaut_rgb) -> np.ndarray:
    face = Face(xyxy=tuple(float(v) for v in ASTRONAUT_FACE_XYXY), score=0.9)
    return mask_faces(astronaut_rgb, [face], SOLID)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_mask_is_outlined_and_the_near_miss_boxed_on_the_output(masked_astronaut, fmt) -> None:
    recorded = row(
        "astronaut.jpg",
        faces=(0.9,),
        misses=(0.33,),
        box=tuple(float(v) for v in ASTRONAUT_FACE_XYXY),
        miss_box=MISS_XYXY,
    )
    tile = thumbnail(_encoded(masked_astronaut, fmt), recorded, SOLID, max_pixels=10**8)
    assert tile.shape == (TILE_PX, TILE_PX, 3)
    scale = TILE_PX / 512
    x1, y1, x2, y2 = (round(v * scale) for v in ASTRONAUT_FACE_XYXY)
    # The solid mask's outline runs along its box; inside it, the output's black.
    green = _near(tile, MASK_RGB)
    assert green[y1 - 2 : y2 + 3, x1 - 2 : x2 + 3].sum() > 2 * (x2 - x1)
    assert green.sum() == green[y1 - 2 : y2 + 3, x1 - 2 : x2 + 3].sum()
    assert tile[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].max() < 40
    # The near miss: a magenta box where the output was left as it is.
    mx1, my1, mx2, my2 = (round(v * scale) for v in MISS_XYXY)
    magenta = _near(tile, NEAR_MISS_RGB, tolerance=60)
    assert magenta[my1 - 1 : my2 + 2, mx1 - 1 : mx2 + 2].sum() >= 2 * (mx2 - mx1)
    inside = tile[my1 + 3 : my2 - 3, mx1 + 3 : mx2 - 3].astype(int)
    expected = cv2.resize(masked_astronaut, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
    expected = expected[my1 + 3 : my2 - 3, mx1 + 3 : mx2 - 3].astype(int)
    assert np.abs(inside - expected).mean() < 12


def test_an_ellipse_is_outlined_as_an_ellipse(masked_astronaut, astronaut_rgb) -> None:
    blur = MaskSettings()
    face = Face(xyxy=tuple(float(v) for v in ASTRONAUT_FACE_XYXY), score=0.9)
    output = _encoded(mask_faces(astronaut_rgb, [face], blur), "PNG")
    recorded = row("a.png", faces=(0.9,), box=face.xyxy)
    tile = thumbnail(output, recorded, blur, max_pixels=10**8)
    scale = TILE_PX / 512
    x1, y1, x2, y2 = (round(v * scale) for v in ASTRONAUT_FACE_XYXY)
    green = _near(tile, MASK_RGB)
    # The box's corners lie outside the ellipse: no outline there.
    assert not green[y1 : y1 + 2, x1 : x1 + 2].any()
    assert not green[y2 - 2 : y2, x2 - 2 : x2].any()
    assert green[y1:y2, x1:x2].sum() > 2 * (x2 - x1)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(8, 700),
    st.integers(8, 700),
    st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"]),
    st.integers(0, 2**32 - 1),
)
def test_without_faces_a_thumbnail_is_the_output_scaled(width, height, fmt, seed) -> None:
    """No outline, no other picture: a thumbnail is the output itself, resized."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    pixels = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    content = _encoded(pixels, fmt)
    decoded = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
    tile = thumbnail(content, row("x.png"), SOLID, max_pixels=10**8)
    scale = min(TILE_PX / width, TILE_PX / height, 4.0)
    fitted = (max(1, round(height * scale)), max(1, round(width * scale)))
    assert max(abs(a - b) for a, b in zip(tile.shape[:2], fitted, strict=True)) <= 1  # JPEG draft
    expected = cv2.resize(decoded, (tile.shape[1], tile.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(tile.astype(int) - expected.astype(int)).mean() < 10


def test_an_output_that_cannot_be_decoded_is_a_grey_tile() -> None:
    tile = thumbnail(b"\xff\xd8 not a jpeg", row("x.jpg", faces=(0.9,)), SOLID, max_pixels=10**8)
    assert tile.shape == (TILE_PX, TILE_PX, 3)
    assert not _near(tile, MASK_RGB).any()


def test_a_multi_frame_output_is_shown_by_the_frame_of_its_best_near_miss() -> None:
    frames = [np.full((64, 64, 3), value, dtype=np.uint8) for value in (0, 255)]
    buffer = io.BytesIO()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100)
    recorded = row("a.gif").model_copy(
        update={"near_misses": (ManifestFace(box=(8, 8, 40, 40), score=0.3, frame=1),)}
    )
    tile = thumbnail(buffer.getvalue(), recorded, SOLID, max_pixels=10**8)
    assert tile[TILE_PX // 2, TILE_PX - 4].min() > 200  # the white frame
    assert _near(tile, NEAR_MISS_RGB, tolerance=60).any()


def test_tiles_sit_on_the_sheet_where_the_page_places_them() -> None:
    tiles = [np.full((TILE_PX, TILE_PX, 3), value, dtype=np.uint8) for value in (50, 100, 150)]
    sheet = cv2.imdecode(np.frombuffer(contact_sheet(tiles, 2), np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape[:2] == (TILE_GAP_PX + 2 * (TILE_PX + TILE_GAP_PX),) * 2
    for index, value in enumerate((50, 100, 150)):
        x, y = tile_origin(index, 2)
        assert (sheet[y : y + TILE_PX, x : x + TILE_PX] == value).all()
