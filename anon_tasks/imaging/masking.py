"""Hide faces in decoded pixels: blur, solid fill or mosaic, one pure numpy function per method.

Every face box is scaled by ``mask_scale`` about its centre, then clipped to the image with
exclusive integer bounds (``x1 = floor(x1)``, ``x2 = ceil(x2)``), so a face cut by the border is
masked up to and including the last row and column. The method is looked up in ``_MASKERS``;
each masker takes the face's pixels and returns new ones of the same shape, and
``mask_faces`` writes them into a copy of the image. The caller's array is never modified. The
alpha channel is masked with the colour (blurred or pixelated alike; opaque under a solid
box): a face can be drawn in transparency alone and show on a light or dark page.

Strength grows with the face, so a face is hidden at every size:

* blur: two passes of a box filter whose kernel is half the scaled box's longer side (odd, at
  least 3 px), with replicated borders, restricted to the face ellipse when asked;
* mosaic: square blocks of ``mosaic_size`` px, grown so that no face spans more than 12 blocks.

A region no larger than the blur kernel, or no larger than one mosaic block, is filled with its
mean colour: a 1 px box or a sub-pixel box never produces a zero-size kernel.

The face ellipse is turned with the face's roll (the line through its eyes, when the detector
gave landmarks), is tangent to the box's sides before it is grown by ``ELLIPSE_REACH``, and is
cut by the box: the mask never leaves the scaled box. An upright face's ellipse covers about
92 % of its box instead of the inscribed ellipse's 78.5 %; a tilted face's ellipse follows the
face into the box corners where its chin and forehead are. ``masked_pixels`` gives the exact
pixels a call replaces, for audits and for the accuracy benchmark.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import cv2
import numpy as np

from anon_tasks.core.errors import UnsupportedImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import AnonymizeMethod, MaskSettings
from anon_tasks.imaging.decoded import DecodedImage, color_channel_count, with_frames

__all__ = [
    "clip_box_px",
    "face_roll_rad",
    "mask_faces",
    "mask_image",
    "masked_areas",
    "masked_pixels",
    "scaled_box",
]

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
#: Semi-axes of the face ellipse as a multiple of those of the ellipse tangent to the box; the
#: box cuts it, so at 1.15 an upright face's mask covers 92.5 % of the box (1.0 would be the
#: inscribed ellipse's 78.5 %). Chosen with benchmarks/accuracy.py's coverage on the dev set.
ELLIPSE_REACH = 1.15
#: Largest roll (degrees) the ellipse is turned by: an ellipse tangent to all four sides of a
#: box exists only below 45 degrees, and near it the landmarks of a sideways face are unreliable.
MAX_ROLL_DEG = 40.0


@dataclass(frozen=True)
class _FaceRegion:
    """One face to mask: its scaled box (unclipped floats), clipped pixel bounds and roll."""

    box: tuple[float, float, float, float]
    bounds: tuple[int, int, int, int]
    roll_rad: float = 0.0

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


def mask_faces(image: np.ndarray, faces: Sequence[Face], masking: MaskSettings) -> np.ndarray:
    """Hide every face of one frame with the method ``masking`` names.

    Faces are masked one after another on the same copy, so overlapping faces are all masked.
    Faces are not filtered by ``Face.frame``: pass the faces of the frame being masked.

    Args:
        image: Pixels as HxW (gray), HxWx2 (gray and alpha), HxWx3 (RGB) or HxWx4 (RGBA),
            uint8 or uint16. Alpha is masked with the colour (blurred, pixelated, or made
            opaque under a solid box): a face drawn in the transparency is hidden too.
        faces: Faces in this image's pixels, before ``mask_scale``.
        masking: Method, box scale, ellipse and mosaic block size.

    Returns:
        A new array of the same shape and dtype; ``image`` itself is left untouched.

    Raises:
        UnsupportedImageError: The array's layout or dtype is not one of those above.

    Example:
        >>> masked = mask_faces(rgb, faces, MaskSettings(method=AnonymizeMethod.MOSAIC))
    """
    try:
        colour_channels = color_channel_count(image)
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(f"cannot mask these pixels: {exc}", source="<array>") from exc
    out = image.copy()
    if masking.method is AnonymizeMethod.NONE or not faces:
        return out
    masker = _MASKERS[masking.method]
    # Every channel, alpha included: a face can show through its transparency alone.
    pixels = out[..., np.newaxis] if out.ndim == 2 else out
    has_alpha = pixels.shape[2] > colour_channels
    height, width = out.shape[:2]
    regions = _face_regions(faces, masking, width, height)
    for region in regions:
        x1, y1, x2, y2 = region.bounds
        target = pixels[y1:y2, x1:x2]
        replacement = masker(np.ascontiguousarray(target), region, masking)
        if has_alpha and masking.method is AnonymizeMethod.SOLID:
            replacement[..., -1] = np.iinfo(replacement.dtype).max  # an opaque black box
        inside = _shape_mask(region, masking)
        if inside is None:
            target[...] = replacement
        else:
            target[inside] = replacement[inside]
    logger.debug("Masked %d of %d faces with %s", len(regions), len(faces), masking.method.value)
    return out


def mask_image(image: DecodedImage, faces: Sequence[Face], masking: MaskSettings) -> DecodedImage:
    """``image`` with ``faces`` masked in their frames: new pixels, the same metadata."""
    if masking.method is AnonymizeMethod.NONE:
        return image
    frames = [
        mask_faces(frame, [face for face in faces if face.frame == index], masking)
        for index, frame in enumerate(image.frames)
    ]
    return with_frames(image, frames)


def masked_pixels(
    height: int, width: int, faces: Sequence[Face], masking: MaskSettings
) -> np.ndarray:
    """The pixels ``mask_faces`` replaces for these faces, as an HxW boolean array.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        faces: Faces in this image's pixels, before ``mask_scale``.
        masking: Method, box scale and ellipse; ``NONE`` replaces nothing.

    Returns:
        True where a pixel's colour is replaced by the mask (whatever its new value).

    Example:
        >>> masked_pixels(512, 512, faces, MaskSettings()).mean()  # share of the image hidden
    """
    covered = np.zeros((height, width), dtype=bool)
    for (x1, y1, x2, y2), inside in masked_areas(height, width, faces, masking):
        covered[y1:y2, x1:x2] |= True if inside is None else inside
    return covered


def masked_areas(
    height: int, width: int, faces: Sequence[Face], masking: MaskSettings
) -> list[tuple[tuple[int, int, int, int], np.ndarray | None]]:
    """Where ``mask_faces`` replaces pixels, face by face, without an image-sized array.

    Returns:
        One ``(bounds, inside)`` per masked face: ``bounds`` as exclusive ``(x1, y1, x2, y2)``
        pixels, ``inside`` the boolean pixels of the bounds the mask replaces, or ``None``
        when it replaces them all (box methods). Empty for ``NONE``.
    """
    if masking.method is AnonymizeMethod.NONE:
        return []
    return [
        (region.bounds, _shape_mask(region, masking))
        for region in _face_regions(faces, masking, width, height)
    ]


def face_roll_rad(face: Face) -> float:
    """The face's roll in radians from its eye line, 0.0 without landmarks or beyond the limit.

    Positive when the face's left eye (on the image's right) is lower than its right eye, in
    image coordinates (y down). Rolls over ``MAX_ROLL_DEG`` give 0.0: the ellipse then stays
    upright, as it is without landmarks.

    Example:
        >>> face_roll_rad(Face(xyxy=(0, 0, 10, 10), score=0.9))
        0.0
    """
    if len(face.landmarks_xy) < 2:
        return 0.0
    (right_x, right_y), (left_x, left_y) = face.landmarks_xy[0], face.landmarks_xy[1]
    dx, dy = left_x - right_x, left_y - right_y
    if not (math.isfinite(dx) and math.isfinite(dy)) or math.hypot(dx, dy) < 1.0:
        return 0.0
    roll = math.atan2(dy, dx)
    return roll if abs(math.degrees(roll)) <= MAX_ROLL_DEG else 0.0


def _face_regions(
    faces: Sequence[Face], masking: MaskSettings, width: int, height: int
) -> list[_FaceRegion]:
    """The regions to mask, faces that miss the image (or are not finite) left out."""
    regions = []
    for face in faces:
        box = scaled_box(face.xyxy, masking.mask_scale)
        bounds = clip_box_px(box, width, height)
        if bounds is None:
            if not all(math.isfinite(v) for v in face.xyxy):
                logger.warning("Face box %s is not finite; it cannot be masked", face.xyxy)
            else:
                logger.debug("Face box %s misses the %dx%d image", box, width, height)
            continue
        regions.append(_FaceRegion(box=box, bounds=bounds, roll_rad=face_roll_rad(face)))
    return regions


def _shape_mask(region: _FaceRegion, masking: MaskSettings) -> np.ndarray | None:
    """Pixels of the region the mask replaces, or ``None`` for all of them (box methods)."""
    if masking.ellipse and masking.method in _ELLIPSE_METHODS:
        return _ellipse_mask(region)
    return None


def _ellipse_mask(region: _FaceRegion) -> np.ndarray:
    """Pixels of the clipped region whose centre lies in the face ellipse, cut by the box.

    The ellipse is turned by the region's roll and tangent to the four sides of the unclipped
    box, then its semi-axes are grown by ``ELLIPSE_REACH``; the box itself bounds the result.
    It comes from the unclipped box, so a face cut by the image border keeps its shape. Boxes
    under ``MIN_ELLIPSE_SIDE`` on a side are taken whole.
    """
    x1, y1, x2, y2 = region.bounds
    bx1, by1, bx2, by2 = region.box
    half_w, half_h = (bx2 - bx1) / 2.0, (by2 - by1) / 2.0
    if min(half_w, half_h) * 2.0 < MIN_ELLIPSE_SIDE:
        return np.ones((y2 - y1, x2 - x1), dtype=bool)
    ys, xs = np.ogrid[y1:y2, x1:x2]
    dx = xs + 0.5 - (bx1 + half_w)
    dy = ys + 0.5 - (by1 + half_h)
    inside = _inside_ellipse(dx, dy, half_w, half_h, 0.0)
    semi_u, semi_v, roll = _tangent_ellipse(half_w, half_h, region.roll_rad)
    if roll != 0.0:
        inside |= _inside_ellipse(dx, dy, semi_u, semi_v, roll)
    return inside


def _inside_ellipse(
    dx: np.ndarray, dy: np.ndarray, semi_u: float, semi_v: float, roll: float
) -> np.ndarray:
    """Offsets from the centre inside the ellipse turned by ``roll``, grown by the reach."""
    cos_r, sin_r = math.cos(roll), math.sin(roll)
    u = (dx * cos_r + dy * sin_r) / (semi_u * ELLIPSE_REACH)
    v = (dy * cos_r - dx * sin_r) / (semi_v * ELLIPSE_REACH)
    return (u * u + v * v) <= 1.0


def _tangent_ellipse(half_w: float, half_h: float, roll: float) -> tuple[float, float, float]:
    """Semi-axes (along and across the roll) of the ellipse turned by ``roll`` and tangent to a
    box of half sides ``half_w`` x ``half_h``, with the roll used; upright when none exists.

    An ellipse turned by r has the half extents sqrt(a^2 cos^2 r + b^2 sin^2 r) across and
    sqrt(a^2 sin^2 r + b^2 cos^2 r) down; setting them to the box's gives a linear system in
    a^2 and b^2, solvable for |r| < 45 degrees when the box is not too elongated for the roll.
    """
    cos2, sin2 = math.cos(roll) ** 2, math.sin(roll) ** 2
    det = cos2 - sin2
    if roll != 0.0 and det > 1e-6:
        along2 = (half_w**2 * cos2 - half_h**2 * sin2) / det
        across2 = (half_h**2 * cos2 - half_w**2 * sin2) / det
        # Below a quarter of the upright semi-axis the box is too elongated for this roll.
        if along2 > (half_w / 4.0) ** 2 and across2 > (half_h / 4.0) ** 2:
            return math.sqrt(along2), math.sqrt(across2), roll
    return half_w, half_h, 0.0


def _mean_fill(pixels: np.ndarray) -> np.ndarray:
    """A new HxWxC array filled with the mean colour of ``pixels``."""
    mean = np.rint(pixels.mean(axis=(0, 1))).astype(pixels.dtype)
    return np.broadcast_to(mean, pixels.shape).copy()


def _odd_at_least(value: float, minimum: int) -> int:
    """The odd integer nearest above ``value`` (rounded down first), at least ``minimum``."""
    size = max(minimum, int(value))
    return size if size % 2 == 1 else size + 1


def _blur_region(pixels: np.ndarray, region: _FaceRegion, masking: MaskSettings) -> np.ndarray:
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


def _solid_region(pixels: np.ndarray, region: _FaceRegion, masking: MaskSettings) -> np.ndarray:
    """Black: every channel set to 0 (the caller makes alpha opaque)."""
    return np.zeros_like(pixels)


def _mosaic_block(region: _FaceRegion, mosaic_size: int) -> int:
    """Block edge in pixels: ``mosaic_size``, grown so the face spans at most 12 blocks."""
    return max(mosaic_size, math.ceil(region.longer_span_px / MOSAIC_MAX_BLOCKS), 1)


def _mosaic_region(pixels: np.ndarray, region: _FaceRegion, masking: MaskSettings) -> np.ndarray:
    """Pixelate into square blocks anchored at the region's top-left corner.

    Each block takes the exact mean of the pixels it covers, partial blocks at the right and
    bottom included: the region is zero-padded to whole blocks, averaged with ``INTER_AREA``
    (exact for an integer factor) and the partial blocks are rescaled by their pixel count.
    """
    block = _mosaic_block(region, masking.mosaic_size)
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


#: The masking strategy for each method but ``NONE`` (which masks nothing: ``mask_faces``
#: returns a copy before looking here); each returns new pixels for one face region.
_MASKERS: Mapping[AnonymizeMethod, _Masker] = MappingProxyType(
    {
        AnonymizeMethod.BLUR: _blur_region,
        AnonymizeMethod.SOLID: _solid_region,
        AnonymizeMethod.MOSAIC: _mosaic_region,
    }
)

#: Methods that honour ``MaskSettings.ellipse``; the others replace the whole box.
_ELLIPSE_METHODS = frozenset({AnonymizeMethod.BLUR})
