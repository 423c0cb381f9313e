"""Thumbnails of masked outputs with their masks and near misses outlined, and contact sheets.

A thumbnail is drawn from the bytes of an output in dest, never from a source: every pixel the
review shows is already in the outputs. The masks are outlined where ``mask_faces`` replaced
pixels (ellipses as ellipses), the near misses as boxes with their scores.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from anon_tasks.core.errors import ImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.records import ManifestFace, ManifestRow
from anon_tasks.core.settings import MaskSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import to_detector_rgb
from anon_tasks.imaging.masking import masked_areas
from anon_tasks.imaging.pillow_guard import pillow_guard

__all__ = [
    "MASK_RGB",
    "NEAR_MISS_RGB",
    "TILE_GAP_PX",
    "TILE_PX",
    "contact_sheet",
    "no_preview_tile",
    "review_frame",
    "sheet_size",
    "thumbnail",
    "tile_origin",
]

logger = logging.getLogger(__name__)

#: Side of the square a thumbnail is fitted into.
TILE_PX = 192
#: Space between thumbnails on a contact sheet (and around them).
TILE_GAP_PX = 4
#: Outline of a mask (what was hidden).
MASK_RGB = (40, 230, 40)
#: Outline and score of a near miss (a candidate left unmasked).
NEAR_MISS_RGB = (255, 0, 200)
_BACKGROUND_RGB = (32, 32, 32)
_NO_PREVIEW_RGB = (70, 70, 70)
#: Most upscaling of a small output, so a thumbnail's outlines stay readable.
_MAX_UPSCALE = 4.0
_JPEG_MAGIC = b"\xff\xd8"
#: Run-length zlib at level 1: on photo sheets faster and smaller than the default strategy.
_PNG_OPTIONS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]
#: Near misses whose score is written on a thumbnail (the highest); the rest are boxes only.
_LABELLED = 3


def review_frame(row: ManifestRow) -> int:
    """The frame a multi-frame output is shown by: that of its best near miss, else of its
    first masked face, else the first."""
    if row.near_misses:
        return max(row.near_misses, key=lambda face: face.score).frame
    return row.faces[0].frame if row.faces else 0


def _faces(recorded: Sequence[ManifestFace], frame: int) -> list[Face]:
    return [
        Face(xyxy=face.box, score=face.score, landmarks_xy=face.landmarks, frame=face.frame)
        for face in recorded
        if face.frame == frame
    ]


def _decoded_rgb(
    content: bytes, frame: int, source: str, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """The frame's pixels as RGB (perhaps reduced), and the output's own height and width.

    A JPEG (one frame) is decoded at the smallest DCT scale that still fills a tile: several
    times faster than a full decode. Outputs carry no orientation tag, so stored pixels are
    upright pixels. Anything the quick path cannot read goes through ``decode_image``.
    """
    if frame == 0 and content.startswith(_JPEG_MAGIC):
        try:
            with pillow_guard(), Image.open(io.BytesIO(content)) as im:
                width, height = im.size
                if width * height <= max_pixels:
                    im.draft("RGB", (TILE_PX, TILE_PX))
                    return np.asarray(im.convert("RGB")), (height, width)
        except Exception:
            logger.debug("%s: quick JPEG decode failed", source, exc_info=True)
    image = decode_image(content, source=source, max_pixels=max_pixels)
    pixels = image.frames[frame if frame < len(image.frames) else 0]
    return to_detector_rgb(pixels), pixels.shape[:2]


def _fitted(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    height, width = rgb.shape[:2]
    scale = min(TILE_PX / width, TILE_PX / height, _MAX_UPSCALE)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interpolation), scale


def _scaled(face: Face, scale: float) -> Face:
    return face.model_copy(
        update={
            "xyxy": tuple(v * scale for v in face.xyxy),
            "landmarks_xy": tuple((x * scale, y * scale) for x, y in face.landmarks_xy),
        }
    )


def _outline_masks(
    tile: np.ndarray, faces: list[Face], masking: MaskSettings, scale: float
) -> None:
    """Draw the outline of the pixels the masks replaced: the same shapes (boxes, or ellipses
    turned with the face) computed for the faces scaled to the thumbnail."""
    height, width = tile.shape[:2]
    covered = np.zeros((height, width), dtype=np.uint8)
    thumb_faces = [_scaled(face, scale) for face in faces]
    for (x1, y1, x2, y2), inside in masked_areas(height, width, thumb_faces, masking):
        covered[y1:y2, x1:x2] |= 1 if inside is None else inside.astype(np.uint8)
    contours, _ = cv2.findContours(covered, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tile, contours, -1, MASK_RGB, 2, lineType=cv2.LINE_AA)


def _outline_near_misses(tile: np.ndarray, faces: list[Face], scale: float) -> None:
    """A box around every near miss; the scores of the ``_LABELLED`` highest, on a dark
    backing (more would hide the picture)."""
    height, width = tile.shape[:2]
    for rank, face in enumerate(sorted(faces, key=lambda face: face.score, reverse=True)):
        x1, y1, x2, y2 = (round(v * scale) for v in face.xyxy)
        x1, y1 = max(0, min(width - 1, x1)), max(0, min(height - 1, y1))
        x2, y2 = max(x1 + 1, min(width - 1, x2)), max(y1 + 1, min(height - 1, y2))
        cv2.rectangle(tile, (x1, y1), (x2, y2), NEAR_MISS_RGB, 1, lineType=cv2.LINE_AA)
        if rank >= _LABELLED:
            continue
        label = f"{face.score:.2f}"
        (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
        tx, ty = x1, y1 - 2 if y1 - 2 - text_h >= 0 else y2 + text_h + 2
        tx = max(0, min(width - text_w - 1, tx))
        ty = max(text_h, min(height - base, ty))
        cv2.rectangle(tile, (tx, ty - text_h - 1), (tx + text_w, ty + base - 1), (0, 0, 0), -1)
        cv2.putText(
            tile, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.35, NEAR_MISS_RGB, 1, cv2.LINE_AA
        )


def thumbnail(
    content: bytes, row: ManifestRow, masking: MaskSettings, *, max_pixels: int
) -> np.ndarray:
    """An RGB thumbnail (at most ``TILE_PX`` a side) of one output with its masks and near
    misses outlined; a grey tile saying so when the output cannot be decoded."""
    frame = review_frame(row)
    source = row.output or row.source
    try:
        rgb, full_hw = _decoded_rgb(content, frame, source, max_pixels)
    except ImageError as exc:
        logger.warning("no review thumbnail of %s: %s", source, exc.reason)
        return no_preview_tile()
    tile, fit_scale = _fitted(rgb)
    tile = np.ascontiguousarray(tile)
    scale = fit_scale * rgb.shape[1] / full_hw[1]
    _outline_masks(tile, _faces(row.faces, frame), masking, scale)
    _outline_near_misses(tile, _faces(row.near_misses, frame), scale)
    return tile


def no_preview_tile() -> np.ndarray:
    """The grey tile shown for an output that cannot be shown."""
    tile = np.full((TILE_PX, TILE_PX, 3), _NO_PREVIEW_RGB, dtype=np.uint8)
    cv2.putText(
        tile, "no preview", (48, TILE_PX // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (220, 220, 220), 1
    )
    return tile


def tile_origin(index: int, columns: int) -> tuple[int, int]:
    """Top-left corner (x, y) of the ``index``-th tile's square on a contact sheet."""
    row, column = divmod(index, columns)
    step = TILE_PX + TILE_GAP_PX
    return TILE_GAP_PX + column * step, TILE_GAP_PX + row * step


def sheet_size(tiles: int, columns: int) -> tuple[int, int]:
    """Width and height in pixels of a contact sheet of ``tiles`` tiles, ``columns`` to a row."""
    step = TILE_PX + TILE_GAP_PX
    rows = max(1, -(-tiles // columns))
    return TILE_GAP_PX + min(max(1, tiles), columns) * step, TILE_GAP_PX + rows * step


def contact_sheet(tiles: Sequence[np.ndarray], columns: int) -> bytes:
    """The tiles on one PNG, ``columns`` to a row, each centred in its ``TILE_PX`` square."""
    width, height = sheet_size(len(tiles), columns)
    sheet = np.full((height, width, 3), _BACKGROUND_RGB, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        x, y = tile_origin(index, columns)
        height, width_px = tile.shape[:2]
        top, left = y + (TILE_PX - height) // 2, x + (TILE_PX - width_px) // 2
        sheet[top : top + height, left : left + width_px] = tile
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), _PNG_OPTIONS)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR array
        raise RuntimeError("the contact sheet could not be encoded")
    return encoded.tobytes()
