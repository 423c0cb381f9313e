"""Hide faces in decoded pixels: blur, solid fill or mosaic, one pure numpy function per method.

Every face box is scaled by ``mask_scale`` about its centre, then clipped to the image with
exclusive integer bounds (``x1 = floor(x1)``, ``x2 = ceil(x2)``), so a face cut by the border is
masked up to and including the last row and column. The method is looked up in ``_MASKERS``;
each masker takes the face's colour pixels and returns new ones of the same shape, and
``mask_faces`` writes them into a copy of the image. The caller's array is never modified and
the alpha channel is never touched.

Strength grows with the face, so a face is hidden at every size:

* blur: two passes of a box filter whose kernel is half the scaled box's longer side (odd, at
  least 3 px), with replicated borders, restricted to the inscribed ellipse when asked;
* mosaic: square blocks of ``mosaic_size`` px, grown so that no face spans more than 12 blocks.

A region no larger than the blur kernel, or no larger than one mosaic block, is filled with its
mean colour: a 1 px box or a sub-pixel box never produces a zero-size kernel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np

from anon_tasks.detections import Face
from anon_tasks.errors import UnsupportedImageError
from anon_tasks.settings import AnonymizeMethod, MaskSettings

__all__ = ["clip_box_px", "mask_faces", "scaled_box"]

logger = logging.getLogger(__name__)

#: Blur kernel edge as a fraction of the scaled box's longer side (measured: see the tests).
BLUR_KERNEL_FRACTION = 0.5
#: Passes of the box filter; two give a smooth triangular profile without box-shaped ghosts.
BLUR_PASSES = 2
#: Smallest blur kernel edge in pixels (odd).
MIN_BLUR_KERNEL = 3
#: Most mosaic blocks a face may span along its longer side.
MOSAIC_MAX_BLOCKS = 12
#: Boxes narrower or lower than this (px) are masked whole: their inscribed ellipse may miss
#: every pixel centre.
MIN_ELLIPSE_SIDE = 3.0

_SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True)
class _FaceRegion:
    """One face to mask: its scaled box (unclipped floats) and its clipped pixel bounds."""

    box: tuple[float, float, float, float]
    bounds: tuple[int, int, int, int]

    @property
    def longer_side(self) -> float:
        """Longer side of the scaled, unclipped box, in pixels."""
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, y2 - y1)

    @property
    def longer_span_px(self) -> int:
        """Whole pixels the scaled, unclipped box touches along its longer side."""
        x1, y1, x2, y2 = self.box
        return max(math.ceil(x2) - math.floor(x1), math.ceil(y2) - math.floor(y1))


_Masker = Callable[[np.ndarray, _FaceRegion, MaskSettings], np.ndarray]


def scaled_box(
    xyxy: tuple[float, float, float, float], mask_scale: float
) -> tuple[float, float, float, float]:
    """Scale a box's width and height by ``mask_scale`` about its centre.

    Args:
        xyxy: Box as (x1, y1, x2, y2) in pixels, ``x2``/``y2`` exclusive.
        mask_scale: Factor applied to the width and the height (1.0 keeps the box).

    Returns:
        The scaled box as floats; not clipped to any image.

    Example:
        >>> scaled_box((10.0, 10.0, 20.0, 30.0), 1.5)
        (7.5, 5.0, 22.5, 35.0)
    """
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half_w, half_h = (x2 - x1) * mask_scale / 2.0, (y2 - y1) * mask_scale / 2.0
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def clip_box_px(
    xyxy: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Clip a float box to an image and round it outwards to whole pixels.

    Bounds are exclusive: ``x1 = floor(max(0, x1))`` and ``x2 = ceil(min(width, x2))``, so
    every pixel the box touches is inside them and a box reaching the right or bottom edge
    includes the last column or row.

    Args:
        xyxy: Box as (x1, y1, x2, y2) in pixels, ``x2``/``y2`` exclusive.
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        ``(x1, y1, x2, y2)`` as ints usable as slices, or ``None`` when the box misses the image,
        is empty or inverted, or has a non-finite coordinate.

    Example:
        >>> clip_box_px((-5.0, 10.2, 600.0, 20.7), 512, 512)
        (0, 10, 512, 21)
    """
    if not all(math.isfinite(v) for v in xyxy):
        return None
    x1 = math.floor(max(0.0, xyxy[0]))
    y1 = math.floor(max(0.0, xyxy[1]))
    x2 = math.ceil(min(float(width), xyxy[2]))
    y2 = math.ceil(min(float(height), xyxy[3]))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def mask_faces(image: np.ndarray, faces: Sequence[Face], settings: MaskSettings) -> np.ndarray:
    """Hide every face of one frame with the method ``settings`` names.

    Faces are masked one after another on the same copy, so overlapping faces are all masked.
    Faces are not filtered by ``Face.frame``: pass the faces of the frame being masked.

    Args:
        image: Pixels as HxW (gray), HxWx2 (gray and alpha), HxWx3 (RGB) or HxWx4 (RGBA),
            uint8 or uint16. Only the colour channels are changed; alpha is copied as is.
        faces: Faces in this image's pixels, before ``mask_scale``.
        settings: Method, box scale, ellipse and mosaic block size.

    Returns:
        A new array of the same shape and dtype; ``image`` itself is left untouched.

    Raises:
        UnsupportedImageError: The array's layout or dtype is not one of those above.

    Example:
        >>> masked = mask_faces(rgb, faces, MaskSettings(method=AnonymizeMethod.MOSAIC))
    """
    colour_channels = _colour_channels(image)
    out = image.copy()
    if settings.method is AnonymizeMethod.NONE or not faces:
        return out
    masker = _MASKERS[settings.method]
    colour = out[..., np.newaxis] if out.ndim == 2 else out[..., :colour_channels]
    height, width = out.shape[:2]
    masked_count = 0
    for face in faces:
        box = scaled_box(face.xyxy, settings.mask_scale)
        bounds = clip_box_px(box, width, height)
        if bounds is None:
            if not all(math.isfinite(v) for v in face.xyxy):
                logger.warning("Face box %s is not finite; it cannot be masked", face.xyxy)
            else:
                logger.debug("Face box %s misses the %dx%d image", box, width, height)
            continue
        region = _FaceRegion(box=box, bounds=bounds)
        x1, y1, x2, y2 = bounds
        target = colour[y1:y2, x1:x2]
        replacement = masker(np.ascontiguousarray(target), region, settings)
        if settings.ellipse and settings.method in _ELLIPSE_METHODS:
            inside = _ellipse_mask(region)
            target[inside] = replacement[inside]
        else:
            target[...] = replacement
        masked_count += 1
    logger.debug("Masked %d of %d faces with %s", masked_count, len(faces), settings.method.value)
    return out


def _colour_channels(image: np.ndarray) -> int:
    """Number of leading colour channels: 1 for gray (with or without alpha), 3 for RGB(A)."""
    if image.dtype not in _SUPPORTED_DTYPES:
        raise UnsupportedImageError(
            f"cannot mask {image.dtype} pixels (uint8 or uint16 only)", source="<array>"
        )
    if image.ndim == 2:
        return 1
    if image.ndim == 3 and image.shape[2] in (1, 2):
        return 1
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return 3
    raise UnsupportedImageError(
        f"cannot mask an array of shape {image.shape} (HxW, HxWx2, HxWx3 or HxWx4 only)",
        source="<array>",
    )


def _ellipse_mask(region: _FaceRegion) -> np.ndarray:
    """Pixels of the clipped region whose centre lies in the ellipse inscribed in the box.

    The ellipse comes from the unclipped box, so a face cut by the border keeps its shape.
    Boxes under ``MIN_ELLIPSE_SIDE`` on a side are taken whole.
    """
    x1, y1, x2, y2 = region.bounds
    bx1, by1, bx2, by2 = region.box
    semi_x, semi_y = (bx2 - bx1) / 2.0, (by2 - by1) / 2.0
    if min(semi_x, semi_y) * 2.0 < MIN_ELLIPSE_SIDE:
        return np.ones((y2 - y1, x2 - x1), dtype=bool)
    ys, xs = np.ogrid[y1:y2, x1:x2]
    dx = (xs + 0.5 - (bx1 + semi_x)) / semi_x
    dy = (ys + 0.5 - (by1 + semi_y)) / semi_y
    return (dx * dx + dy * dy) <= 1.0


def _mean_fill(pixels: np.ndarray) -> np.ndarray:
    """A new HxWxC array filled with the mean colour of ``pixels``."""
    mean = np.rint(pixels.mean(axis=(0, 1))).astype(pixels.dtype)
    return np.broadcast_to(mean, pixels.shape).copy()


def _odd_at_least(value: float, minimum: int) -> int:
    """The odd integer nearest above ``value`` (rounded down first), at least ``minimum``."""
    size = max(minimum, int(value))
    return size if size % 2 == 1 else size + 1


def _blur_region(pixels: np.ndarray, region: _FaceRegion, settings: MaskSettings) -> np.ndarray:
    """Blur with a box filter applied ``BLUR_PASSES`` times, kernel half the longer side."""
    kernel = _odd_at_least(region.longer_side * BLUR_KERNEL_FRACTION, MIN_BLUR_KERNEL)
    height, width = pixels.shape[:2]
    if height <= kernel and width <= kernel:
        # The kernel covers the whole region: its blur tends to the mean, so use the mean.
        return _mean_fill(pixels)
    blurred = pixels
    for _ in range(BLUR_PASSES):
        blurred = cv2.blur(blurred, (kernel, kernel), borderType=cv2.BORDER_REPLICATE)
    # cv2 drops a single channel axis; put it back.
    return blurred.reshape(pixels.shape)


def _solid_region(pixels: np.ndarray, region: _FaceRegion, settings: MaskSettings) -> np.ndarray:
    """Black: every colour channel set to 0."""
    return np.zeros_like(pixels)


def _mosaic_block(region: _FaceRegion, mosaic_size: int) -> int:
    """Block edge in pixels: ``mosaic_size``, grown so the face spans at most 12 blocks."""
    return max(mosaic_size, math.ceil(region.longer_span_px / MOSAIC_MAX_BLOCKS), 1)


def _mosaic_region(pixels: np.ndarray, region: _FaceRegion, settings: MaskSettings) -> np.ndarray:
    """Pixelate into square blocks anchored at the region's top-left corner.

    Each block takes the exact mean of the pixels it covers, partial blocks at the right and
    bottom included: the region is zero-padded to whole blocks, averaged with ``INTER_AREA``
    (exact for an integer factor) and the partial blocks are rescaled by their pixel count.
    """
    block = _mosaic_block(region, settings.mosaic_size)
    height, width = pixels.shape[:2]
    if height <= block and width <= block:
        return _mean_fill(pixels)
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    channels = pixels.shape[2]
    padded = np.zeros((rows * block, cols * block, channels), dtype=np.float32)
    padded[:height, :width] = pixels
    means = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA).reshape(
        rows, cols, channels
    )
    row_counts = np.minimum(block, height - np.arange(rows) * block)
    col_counts = np.minimum(block, width - np.arange(cols) * block)
    means *= (block * block) / np.outer(row_counts, col_counts)[..., np.newaxis]
    cells = np.rint(means).astype(pixels.dtype)
    # INTER_NEAREST_EXACT replicates each cell into exactly block x block pixels.
    blocks = cv2.resize(
        cells, (cols * block, rows * block), interpolation=cv2.INTER_NEAREST_EXACT
    ).reshape(rows * block, cols * block, channels)
    return blocks[:height, :width].copy()


def _keep_region(pixels: np.ndarray, region: _FaceRegion, settings: MaskSettings) -> np.ndarray:
    """No masking (detect only)."""
    return pixels.copy()


#: The masking strategy for each method; each returns new pixels for one face region.
_MASKERS: Mapping[AnonymizeMethod, _Masker] = MappingProxyType(
    {
        AnonymizeMethod.BLUR: _blur_region,
        AnonymizeMethod.SOLID: _solid_region,
        AnonymizeMethod.MOSAIC: _mosaic_region,
        AnonymizeMethod.NONE: _keep_region,
    }
)

#: Methods that honour ``MaskSettings.ellipse``; the others replace the whole box.
_ELLIPSE_METHODS = frozenset({AnonymizeMethod.BLUR})
