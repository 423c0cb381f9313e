"""Tests for anon_tasks.imaging.masking, on real photos.

The astronaut's face box below is CenterFace's detection on scikit-image's astronaut
(181.5, 58.2, 269.9, 177.8 at score 0.93), rounded to whole pixels and checked by eye.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from anon_tasks.core.errors import UnsupportedImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import AnonymizeMethod, MaskSettings
from anon_tasks.imaging.masking import (
    _MASKERS,
    ELLIPSE_REACH,
    clip_box_px,
    face_roll_rad,
    mask_faces,
    masked_pixels,
    scaled_box,
)

#: The astronaut's face in the 512x512 image (88 x 120 px).
FACE_BOX = (182.0, 58.0, 270.0, 178.0)
ALL_METHODS = tuple(AnonymizeMethod)
MASKING_METHODS = (AnonymizeMethod.BLUR, AnonymizeMethod.SOLID, AnonymizeMethod.MOSAIC)
LAYOUTS = ("gray", "gray_alpha", "rgb", "rgba")
DTYPES = (np.uint8, np.uint16)


# --- helpers -------------------------------------------------------------------------------


def _face(box: tuple[float, float, float, float], frame: int = 0) -> Face:
    return Face(xyxy=box, score=0.9, frame=frame)


def _settings(method: AnonymizeMethod = AnonymizeMethod.BLUR, **values: object) -> MaskSettings:
    return MaskSettings(method=method, **values)


def _as_layout(rgb: np.ndarray, layout: str, dtype: type) -> np.ndarray:
    """The photo in one of the supported layouts; alpha is a real, varying ramp."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    alpha = np.broadcast_to(
        (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8), (height, width)
    )
    image = {
        "gray": gray,
        "gray_alpha": np.dstack([gray, alpha]),
        "rgb": rgb,
        "rgba": np.dstack([rgb, alpha]),
    }[layout]
    image = np.ascontiguousarray(image)
    if dtype == np.uint16:
        image = image.astype(np.uint16) * 257
    return image


def _colour(image: np.ndarray) -> np.ndarray:
    """Colour channels as HxWxC (C = 1 or 3)."""
    if image.ndim == 2:
        return image[..., np.newaxis]
    return image[..., :1] if image.shape[2] in (1, 2) else image[..., :3]


def _gray(image: np.ndarray) -> np.ndarray:
    colour = _colour(image).astype(np.float32)
    if colour.shape[2] == 1:
        return colour[..., 0]
    return cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)


def _ellipse(shape: tuple[int, ...], box: tuple[float, ...], radius: float = 1.0) -> np.ndarray:
    """Pixels of an upright face's blur ellipse shrunk by ``radius``: the inscribed ellipse
    grown by ELLIPSE_REACH, cut by the box."""
    x1, y1, x2, y2 = box
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    dx = (xs + 0.5 - (x1 + x2) / 2) / ((x2 - x1) / 2)
    dy = (ys + 0.5 - (y1 + y2) / 2) / ((y2 - y1) / 2)
    in_box = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
    return in_box & (dx * dx + dy * dy <= (radius * ELLIPSE_REACH) ** 2)


def _outside(shape: tuple[int, ...], bounds: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = bounds
    mask = np.ones(shape[:2], dtype=bool)
    mask[y1:y2, x1:x2] = False
    return mask


def _laplacian_variance(gray: np.ndarray, mask: np.ndarray) -> float:
    return float(cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F)[mask].var())


def _detail_correlation(
    before: np.ndarray, after: np.ndarray, mask: np.ndarray, sigma: float
) -> float:
    """Normalised correlation of two images' high-pass detail (image minus its Gaussian blur)."""

    def high_pass(gray: np.ndarray) -> np.ndarray:
        gray = gray.astype(np.float64)
        return (gray - cv2.GaussianBlur(gray, (0, 0), sigma))[mask]

    a, b = high_pass(before), high_pass(after)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """HxW: pixels where any colour channel differs."""
    return np.any(_colour(before) != _colour(after), axis=2)


def _scaled_up(rgb: np.ndarray, factor: int) -> tuple[np.ndarray, tuple[float, ...]]:
    big = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    return big, tuple(v * factor for v in FACE_BOX)


# --- box geometry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "scale", "expected"),
    [
        ((10.0, 10.0, 20.0, 30.0), 1.0, (10.0, 10.0, 20.0, 30.0)),
        ((10.0, 10.0, 20.0, 30.0), 1.5, (7.5, 5.0, 22.5, 35.0)),
        ((10.0, 10.0, 20.0, 30.0), 0.5, (12.5, 15.0, 17.5, 25.0)),
        ((-4.0, 500.0, 4.0, 520.0), 2.0, (-8.0, 490.0, 8.0, 530.0)),
    ],
)
def test_scaled_box_scales_about_the_centre_without_clipping(box, scale, expected):
    assert scaled_box(box, scale) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10.0, 20.0, 30.0, 40.0), (10, 20, 30, 40)),
        ((10.2, 20.7, 29.1, 39.9), (10, 20, 30, 40)),  # rounded outwards
        ((-5.0, -3.0, 30.0, 40.0), (0, 0, 30, 40)),
        ((500.0, 490.0, 512.0, 512.0), (500, 490, 512, 512)),  # touching: last col/row kept
        ((500.0, 490.0, 511.2, 511.5), (500, 490, 512, 512)),
        ((500.0, 490.0, 600.0, 700.0), (500, 490, 512, 512)),
        ((-10.0, -10.0, 600.0, 600.0), (0, 0, 512, 512)),
        ((100.2, 100.3, 100.6, 100.7), (100, 100, 101, 101)),  # sub-pixel: one pixel
        ((511.5, 511.5, 511.9, 511.9), (511, 511, 512, 512)),
        ((600.0, 10.0, 700.0, 20.0), None),  # right of the image
        ((-50.0, 10.0, -1.0, 20.0), None),  # left of the image
        ((10.0, -50.0, 20.0, 0.0), None),  # ends exactly at the top edge
        ((10.0, 10.0, 10.0, 20.0), None),  # zero width
        ((20.0, 10.0, 10.0, 20.0), None),  # inverted
        ((math.nan, 10.0, 20.0, 20.0), None),
        ((10.0, 10.0, math.inf, 20.0), None),
    ],
)
def test_clip_box_px(box, expected):
    assert clip_box_px(box, 512, 512) == expected


def test_every_masking_method_has_a_masker():
    # NONE masks nothing: mask_faces returns a copy before it looks for a masker.
    assert set(_MASKERS) == set(AnonymizeMethod) - {AnonymizeMethod.NONE}


# --- every method x dtype x layout -----------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_masks_face_only_and_keeps_alpha_dtype_and_input(astronaut_rgb, method, dtype, layout):
    image = _as_layout(astronaut_rgb, layout, dtype)
    before = image.copy()
    out = mask_faces(image, [_face(FACE_BOX)], _settings(method))

    np.testing.assert_array_equal(image, before)  # the input is never modified
    assert not np.shares_memory(out, image)
    assert out.shape == image.shape
    assert out.dtype == image.dtype
    bounds = clip_box_px(FACE_BOX, 512, 512)
    outside = _outside(image.shape, bounds)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        # Alpha exactly kept outside the face box; under a solid box it is made opaque.
        np.testing.assert_array_equal(out[..., -1][outside], image[..., -1][outside])
        if method is AnonymizeMethod.SOLID:
            x1, y1, x2, y2 = bounds
            assert (out[y1:y2, x1:x2, -1] == np.iinfo(out.dtype).max).all()
    np.testing.assert_array_equal(_colour(out)[outside], _colour(image)[outside])

    inner = _ellipse(image.shape, FACE_BOX, radius=0.9)
    changed = _changed(image, out)
    if method is AnonymizeMethod.NONE:
        np.testing.assert_array_equal(out, image)
    elif method is AnonymizeMethod.SOLID:
        x1, y1, x2, y2 = bounds
        assert not _colour(out)[y1:y2, x1:x2].any()
    else:
        assert changed[inner].mean() > 0.8


@pytest.mark.parametrize("method", MASKING_METHODS)
def test_uint16_is_masked_like_uint8(astronaut_rgb, method):
    out8 = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(method))
    out16 = mask_faces(astronaut_rgb.astype(np.uint16) * 257, [_face(FACE_BOX)], _settings(method))
    # Same picture at 16-bit precision: no clipping to 255, no overflow.
    difference = np.abs(out16.astype(np.float64) / 257 - out8.astype(np.float64))
    assert difference.max() <= 1.5
    assert out16.max() > 255


# --- blur --------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 4])
def test_blur_destroys_detail_at_every_face_size(astronaut_rgb, factor):
    image, box = _scaled_up(astronaut_rgb, factor)
    out = mask_faces(image, [_face(box)], _settings(AnonymizeMethod.BLUR))
    # Inside the ellipse, away from its hard edge.
    inner = _ellipse(image.shape, box, radius=0.9)
    before, after = _gray(image), _gray(out)

    # Compare at the face's own scale, so both sizes are judged alike.
    small = (512, 512)
    before_small = cv2.resize(before, small, interpolation=cv2.INTER_AREA)
    after_small = cv2.resize(after, small, interpolation=cv2.INTER_AREA)
    inner_small = _ellipse(small, FACE_BOX, radius=0.9)
    assert _laplacian_variance(after_small, inner_small) < 0.1 * _laplacian_variance(
        before_small, inner_small
    )
    # Eye/nose/mouth-sized detail (sigma = face height / 15) is gone, not just fine texture.
    sigma = (box[3] - box[1]) / 15
    assert _detail_correlation(before, after, inner, sigma) < 0.3


def test_fixed_kernel_would_be_too_weak_on_a_large_face(astronaut_rgb):
    """The detail metric above does catch a kernel that does not grow with the face."""
    image, box = _scaled_up(astronaut_rgb, 4)
    x1, y1, x2, y2 = (int(v) for v in box)
    fixed = image.copy()
    region = fixed[y1:y2, x1:x2]
    for _ in range(2):  # the 1x face's kernel (61 px), used on the 4x face
        region[...] = cv2.blur(region, (61, 61), borderType=cv2.BORDER_REPLICATE)
    inner = _ellipse(image.shape, box, radius=0.9)
    sigma = (box[3] - box[1]) / 15
    assert _detail_correlation(_gray(image), _gray(fixed), inner, sigma) > 0.5


def test_ellipse_keeps_the_box_corners_and_box_mode_replaces_them(astronaut_rgb):
    x1, y1, x2, y2 = (int(v) for v in FACE_BOX)
    corners = np.zeros((512, 512), dtype=bool)
    for ys in (slice(y1, y1 + 6), slice(y2 - 6, y2)):
        for xs in (slice(x1, x1 + 6), slice(x2 - 6, x2)):
            corners[ys, xs] = True
    assert not (_ellipse((512, 512), FACE_BOX) & corners).any()
    centre = _ellipse((512, 512), FACE_BOX, radius=0.5)

    with_ellipse = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(ellipse=True))
    whole_box = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(ellipse=False))

    np.testing.assert_array_equal(with_ellipse[corners], astronaut_rgb[corners])
    changed_ellipse = _changed(astronaut_rgb, with_ellipse)
    # Exactly the pixels whose centre is in the ellipse may change.
    assert not changed_ellipse[~_ellipse((512, 512), FACE_BOX)].any()
    assert changed_ellipse[centre].mean() > 0.9
    assert _changed(astronaut_rgb, whole_box)[corners].mean() > 0.8
    assert _changed(astronaut_rgb, whole_box)[centre].mean() > 0.9


def test_upright_ellipse_covers_most_of_the_box_but_not_its_corners():
    covered = masked_pixels(512, 512, [_face(FACE_BOX)], _settings())
    bounds = clip_box_px(FACE_BOX, 512, 512)
    x1, y1, x2, y2 = bounds
    share = covered[y1:y2, x1:x2].mean()
    # The inscribed ellipse would cover pi/4 (78.5 %); grown by the reach and cut by the box,
    # about 92.5 %.
    assert 0.90 < share < 0.95
    assert not covered[_outside(covered.shape, bounds)].any()
    assert not covered[y1, x1]
    assert not covered[y2 - 1, x2 - 1]


def _rolled_face(box: tuple[float, ...], degrees: float) -> Face:
    """A face whose eyes lie on a line turned by ``degrees`` (image coordinates, y down)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = (box[2] - box[0]) / 5
    ux, uy = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    eyes = ((cx - half * ux, cy - half * uy), (cx + half * ux, cy + half * uy))
    rest = ((cx, cy + half), (cx - half, cy + 2 * half), (cx + half, cy + 2 * half))
    return Face(xyxy=box, score=0.9, landmarks_xy=eyes + rest)


@pytest.mark.parametrize("degrees", [-30.0, 0.0, 12.5, 30.0, 39.0])
def test_roll_comes_from_the_eye_line(degrees):
    assert math.degrees(face_roll_rad(_rolled_face(FACE_BOX, degrees))) == pytest.approx(degrees)


@pytest.mark.parametrize("degrees", [60.0, -90.0, 180.0])
def test_rolls_beyond_the_limit_and_missing_landmarks_keep_the_ellipse_upright(degrees):
    assert face_roll_rad(_rolled_face(FACE_BOX, degrees)) == 0.0
    assert face_roll_rad(_face(FACE_BOX)) == 0.0
    nan_eyes = Face(xyxy=FACE_BOX, score=0.9, landmarks_xy=((math.nan, 1.0), (2.0, 1.0)))
    assert face_roll_rad(nan_eyes) == 0.0


def test_a_tilted_face_is_masked_into_the_corners_its_roll_points_to():
    # The box of a face 160 px wide and 220 px high turned by 30 degrees.
    box = (150.0, 100.0, 326.8, 306.8)
    upright = masked_pixels(512, 512, [_face(box)], _settings())
    tilted = masked_pixels(512, 512, [_rolled_face(box, 30.0)], _settings())
    bounds = clip_box_px(box, 512, 512)
    # Never less than the upright ellipse, never outside the box.
    assert not (upright & ~tilted).any()
    assert not tilted[_outside(tilted.shape, bounds)].any()
    # The eye line runs down to the right, so the face's long axis runs from the top right
    # corner to the bottom left one: those corners are covered now, the other two are not.
    x1, y1, x2, y2 = bounds
    near = 12
    top_right = tilted[y1 + near, x2 - 1 - near]
    bottom_left = tilted[y2 - 1 - near, x1 + near]
    top_left = tilted[y1 + near, x1 + near]
    assert top_right
    assert bottom_left
    assert not top_left
    assert not upright[y1 + near, x2 - 1 - near]
    assert tilted.sum() > upright.sum()


@pytest.mark.parametrize("method", MASKING_METHODS)
@pytest.mark.parametrize("ellipse", [True, False])
def test_masked_pixels_are_exactly_the_pixels_mask_faces_replaces(astronaut_rgb, method, ellipse):
    faces = [_rolled_face((100.0, 150.0, 220.0, 290.0), 25.0), _face(FACE_BOX)]
    settings = _settings(method, ellipse=ellipse)
    covered = masked_pixels(512, 512, faces, settings)
    # Solid paints black; on a white image every replaced pixel changes.
    white = np.full_like(astronaut_rgb, 255)
    solid = mask_faces(white, faces, _settings(AnonymizeMethod.SOLID, ellipse=ellipse))
    changed = mask_faces(astronaut_rgb, faces, settings)
    assert not _changed(astronaut_rgb, changed)[~covered].any()
    if method is AnonymizeMethod.BLUR and ellipse:
        np.testing.assert_array_equal(
            covered, masked_pixels(512, 512, faces, _settings(AnonymizeMethod.BLUR))
        )
    else:
        np.testing.assert_array_equal(covered, _changed(white, solid))
    assert not masked_pixels(512, 512, faces, _settings(AnonymizeMethod.NONE)).any()


def test_roll_of_a_real_tilted_face(astronaut_rgb):
    """The detector's landmarks on the astronaut turned by 25 degrees give its roll."""
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.detection.detector import CenterFaceDetector

    centre = ((FACE_BOX[0] + FACE_BOX[2]) / 2, (FACE_BOX[1] + FACE_BOX[3]) / 2)
    upright_roll = None
    detector = CenterFaceDetector(DetectionSettings(device="cpu"))
    for degrees in (0.0, 25.0):
        # cv2 turns counter-clockwise on screen, so the eye line turns by -degrees (y down).
        turn = cv2.getRotationMatrix2D(centre, degrees, 1.0)
        image = cv2.warpAffine(astronaut_rgb, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
        faces = [f for f in detector.detect_faces(image) if f.score >= 0.4]
        assert len(faces) == 1
        roll = math.degrees(face_roll_rad(faces[0]))
        if upright_roll is None:
            upright_roll = roll
        else:
            assert roll - upright_roll == pytest.approx(-degrees, abs=4.0)


@pytest.mark.parametrize("method", [AnonymizeMethod.SOLID, AnonymizeMethod.MOSAIC])
def test_ellipse_is_ignored_by_box_methods(astronaut_rgb, method):
    a = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(method, ellipse=True))
    b = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(method, ellipse=False))
    np.testing.assert_array_equal(a, b)


# --- mask_scale ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", MASKING_METHODS)
def test_mask_scale_enlarges_the_masked_area_about_the_centre(astronaut_rgb, method):
    settings = _settings(method, mask_scale=1.5, ellipse=False)
    out = mask_faces(astronaut_rgb, [_face(FACE_BOX)], settings)
    big = scaled_box(FACE_BOX, 1.5)
    assert big == pytest.approx((160.0, 28.0, 292.0, 208.0))
    bounds = clip_box_px(big, 512, 512)

    changed = _changed(astronaut_rgb, out)
    assert not changed[_outside(out.shape, bounds)].any()
    ys, xs = np.nonzero(changed)
    # The changed area reaches (nearly) the enlarged box on every side, beyond the face box.
    assert xs.min() <= bounds[0] + 2
    assert xs.max() >= bounds[2] - 3
    assert ys.min() <= bounds[1] + 2
    assert ys.max() >= bounds[3] - 3
    assert (xs.min() + xs.max() + 1) / 2 == pytest.approx((FACE_BOX[0] + FACE_BOX[2]) / 2, abs=2)
    assert (ys.min() + ys.max() + 1) / 2 == pytest.approx((FACE_BOX[1] + FACE_BOX[3]) / 2, abs=2)
    ring = ~_outside(out.shape, bounds) & _outside(out.shape, (182, 58, 270, 178))
    assert changed[ring].mean() > 0.5


def test_mask_scale_scales_the_ellipse(astronaut_rgb):
    out = mask_faces(astronaut_rgb, [_face(FACE_BOX)], _settings(mask_scale=1.5))
    big = scaled_box(FACE_BOX, 1.5)
    changed = _changed(astronaut_rgb, out)
    assert not changed[~_ellipse(out.shape, big)].any()
    assert changed[_ellipse(out.shape, big, radius=0.95)].mean() > 0.9


# --- borders and tiny boxes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shift_xy", "side"),
    [
        ((-250, 0), "left"),  # face box x from -68: x1 < 0
        ((300, 0), "right"),  # face box to x = 570: x2 > W
        ((0, 400), "bottom"),  # face box to y = 578: y2 > H
    ],
)
@pytest.mark.parametrize("method", MASKING_METHODS)
def test_faces_cut_by_the_border_are_masked_up_to_the_edge(astronaut_rgb, shift_xy, side, method):
    dx, dy = shift_xy
    # The real face, rolled so that it is cut by the border.
    image = np.roll(astronaut_rgb, shift=(dy, dx), axis=(0, 1))
    box = (FACE_BOX[0] + dx, FACE_BOX[1] + dy, FACE_BOX[2] + dx, FACE_BOX[3] + dy)
    bounds = clip_box_px(box, 512, 512)
    out = mask_faces(image, [_face(box)], _settings(method))

    changed = _changed(image, out)
    assert not changed[_outside(out.shape, bounds)].any()
    x1, y1, x2, y2 = bounds
    edge = {
        "left": (slice(y1, y2), slice(0, 1)),
        "right": (slice(y1, y2), slice(511, 512)),
        "bottom": (slice(511, 512), slice(x1, x2)),
    }[side]
    if method is AnonymizeMethod.SOLID:
        assert not out[y1:y2, x1:x2].any()
        assert not out[edge].any()
    else:
        # The ellipse comes from the unclipped box: the face keeps its shape at the border.
        expected = (
            _ellipse(out.shape, box)
            if method is AnonymizeMethod.BLUR
            else ~_outside(out.shape, bounds)
        )
        assert not changed[~expected].any()
        assert changed[edge][expected[edge]].mean() > 0.9  # last row/column included
        inner = _ellipse(out.shape, box, radius=0.9)
        assert changed[inner].mean() > 0.9


@pytest.mark.parametrize(
    "box",
    [(600.0, 600.0, 700.0, 700.0), (-100.0, -100.0, -20.0, -20.0), (530.0, 10.0, 600.0, 60.0)],
)
@pytest.mark.parametrize("method", MASKING_METHODS)
def test_box_entirely_outside_changes_nothing(astronaut_rgb, box, method):
    out = mask_faces(astronaut_rgb, [_face(box)], _settings(method, mask_scale=1.3))
    np.testing.assert_array_equal(out, astronaut_rgb)


@pytest.mark.parametrize(
    ("box", "bounds"),
    [
        ((200.0, 100.0, 201.0, 101.0), (200, 100, 201, 101)),  # 1x1
        ((200.0, 100.0, 202.0, 102.0), (200, 100, 202, 102)),  # 2x2
        ((200.2, 100.3, 200.6, 100.7), (200, 100, 201, 101)),  # sub-pixel
        ((200.8, 100.8, 201.3, 101.2), (200, 100, 202, 102)),  # sub-pixel across 4 pixels
        ((511.0, 511.0, 512.0, 512.0), (511, 511, 512, 512)),  # last pixel
        ((200.0, 100.0, 203.0, 103.0), (200, 100, 203, 103)),  # 3x3: ellipse applies
    ],
)
@pytest.mark.parametrize("ellipse", [True, False])
@pytest.mark.parametrize("method", MASKING_METHODS)
def test_tiny_boxes_do_not_crash_and_are_filled(astronaut_rgb, box, bounds, ellipse, method):
    out = mask_faces(astronaut_rgb, [_face(box)], _settings(method, ellipse=ellipse))
    assert clip_box_px(box, 512, 512) == bounds
    x1, y1, x2, y2 = bounds
    assert not _changed(astronaut_rgb, out)[_outside(out.shape, bounds)].any()
    region = astronaut_rgb[y1:y2, x1:x2].astype(np.float64)
    masked = out[y1:y2, x1:x2]
    if method is AnonymizeMethod.SOLID:
        assert not masked.any()
    elif (x2 - x1) * (y2 - y1) == 1:
        # One pixel is its own mean colour: blur and mosaic leave it as it was.
        np.testing.assert_array_equal(masked, astronaut_rgb[y1:y2, x1:x2])
    else:
        # Smaller than the kernel or a block: the mean colour (the ellipse of a 3x3 box keeps
        # its corners).
        mean = np.rint(region.mean(axis=(0, 1)))
        inside = _ellipse(out.shape, box)[y1:y2, x1:x2] if ellipse else np.ones((1, 1), bool)
        if method is AnonymizeMethod.MOSAIC or not ellipse or inside.all():
            np.testing.assert_array_equal(
                masked.reshape(-1, 3), np.tile(mean, (masked.size // 3, 1))
            )
        else:
            np.testing.assert_array_equal(masked[inside], np.tile(mean, (inside.sum(), 1)))
        assert _changed(astronaut_rgb[y1:y2, x1:x2], masked).any()


@pytest.mark.parametrize("method", MASKING_METHODS)
def test_tiny_box_is_masked_when_scaled(astronaut_rgb, method):
    out = mask_faces(
        astronaut_rgb, [_face((200.0, 100.0, 201.0, 101.0))], _settings(method, mask_scale=3.0)
    )
    bounds = clip_box_px(scaled_box((200.0, 100.0, 201.0, 101.0), 3.0), 512, 512)
    assert bounds == (199, 99, 202, 102)
    assert not _changed(astronaut_rgb, out)[_outside(out.shape, bounds)].any()
    assert _changed(astronaut_rgb, out)[100, 200]


# --- mosaic --------------------------------------------------------------------------------


def _block_anchors(length: int, block: int) -> np.ndarray:
    return (np.arange(length) // block) * block


@pytest.mark.parametrize(
    ("factor", "mosaic_size", "block"),
    [
        (1, 20, 20),  # default block on a 120 px face: 6 blocks tall
        (1, 7, 10),  # grown: 120 px / 12 blocks
        (1, 1, 10),
        (4, 20, 40),  # 480 px face: grown to 40 px, 12 blocks
        (4, 49, 49),  # a block size cv2's plain INTER_NEAREST replicates unevenly
        (1, 200, 200),  # one block larger than the face: its mean colour
    ],
)
def test_mosaic_is_made_of_constant_blocks(astronaut_rgb, factor, mosaic_size, block):
    image, box = _scaled_up(astronaut_rgb, factor)
    out = mask_faces(
        image, [_face(box)], _settings(AnonymizeMethod.MOSAIC, mosaic_size=mosaic_size)
    )
    x1, y1, x2, y2 = clip_box_px(box, image.shape[1], image.shape[0])
    region, original = out[y1:y2, x1:x2], image[y1:y2, x1:x2].astype(np.float64)
    height, width = region.shape[:2]

    rows, cols = _block_anchors(height, block), _block_anchors(width, block)
    # Every pixel equals the top-left pixel of its block: square blocks of `block` px.
    np.testing.assert_array_equal(region, region[rows][:, cols])
    n_rows, n_cols = math.ceil(height / block), math.ceil(width / block)
    assert max(n_rows, n_cols) <= 12
    # Neighbouring blocks differ (the grid is not coarser than it should be).
    cells = region[::block, ::block].astype(np.int64)
    assert cells.shape[:2] == (n_rows, n_cols)
    if n_rows > 1:
        assert np.any(cells[1:] != cells[:-1], axis=2).mean() > 0.5
    # Each block is the mean colour of the pixels it covers, partial blocks included.
    sums = np.add.reduceat(
        np.add.reduceat(original, np.arange(0, height, block), axis=0),
        np.arange(0, width, block),
        axis=1,
    )
    counts = np.add.reduceat(
        np.add.reduceat(np.ones((height, width)), np.arange(0, height, block), axis=0),
        np.arange(0, width, block),
        axis=1,
    )
    np.testing.assert_allclose(cells, sums / counts[..., None], atol=0.51)


def test_mosaic_block_grows_with_a_wide_face(astronaut_rgb):
    box = (10.0, 200.0, 500.0, 300.0)  # 490 px wide: at most 12 blocks -> 41 px
    out = mask_faces(astronaut_rgb, [_face(box)], _settings(AnonymizeMethod.MOSAIC))
    region = out[200:300, 10:500]
    np.testing.assert_array_equal(
        region, region[_block_anchors(100, 41)][:, _block_anchors(490, 41)]
    )


# --- several faces, frames, errors ------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", MASKING_METHODS)
def test_overlapping_faces_are_all_masked(astronaut_rgb, method, reverse):
    second = (FACE_BOX[0] + 40, FACE_BOX[1] + 50, FACE_BOX[2] + 40, FACE_BOX[3] + 50)
    faces = [_face(FACE_BOX), _face(second)]
    if reverse:
        faces.reverse()
    out = mask_faces(astronaut_rgb, faces, _settings(method))
    union = ~_outside(out.shape, clip_box_px(FACE_BOX, 512, 512)) | ~_outside(
        out.shape, clip_box_px(second, 512, 512)
    )
    assert not _changed(astronaut_rgb, out)[~union].any()
    if method is AnonymizeMethod.SOLID:
        assert not out[union].any()
        return
    before, after = _gray(astronaut_rgb), _gray(out)
    for box in (FACE_BOX, second):
        inner = _ellipse(out.shape, box, radius=0.9)
        assert _changed(astronaut_rgb, out)[inner].mean() > 0.8
        if method is AnonymizeMethod.BLUR:
            assert _laplacian_variance(after, inner) < 0.1 * _laplacian_variance(before, inner)


def test_faces_are_not_filtered_by_frame(astronaut_rgb):
    out = mask_faces(astronaut_rgb, [_face(FACE_BOX, frame=3)], _settings(AnonymizeMethod.SOLID))
    assert not out[58:178, 182:270].any()


def test_no_faces_returns_a_copy(astronaut_rgb):
    out = mask_faces(astronaut_rgb, [], _settings())
    np.testing.assert_array_equal(out, astronaut_rgb)
    assert not np.shares_memory(out, astronaut_rgb)


def test_gray_photo_is_blurred(camera_gray):
    box = (190.0, 50.0, 290.0, 170.0)
    out = mask_faces(camera_gray, [_face(box)], _settings())
    inner = _ellipse(out.shape, box, radius=0.9)
    assert out.shape == camera_gray.shape
    assert _laplacian_variance(out, inner) < 0.1 * _laplacian_variance(camera_gray, inner)


def test_non_finite_box_is_skipped_with_a_warning(astronaut_rgb, caplog):
    face = Face.model_construct(
        xyxy=(math.nan, 0.0, 10.0, 10.0), score=0.9, landmarks_xy=(), frame=0
    )
    with caplog.at_level("WARNING", logger="anon_tasks.imaging.masking"):
        out = mask_faces(astronaut_rgb, [face], _settings())
    np.testing.assert_array_equal(out, astronaut_rgb)
    assert "not finite" in caplog.text


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8, 3), dtype=np.int16),
        np.zeros((8, 8, 5), dtype=np.uint8),
        np.zeros((8,), dtype=np.uint8),
        np.zeros((2, 8, 8, 3), dtype=np.uint8),
    ],
    ids=["float32", "int16", "5-channel", "1-d", "4-d"],
)
def test_unsupported_arrays_are_refused(image):
    with pytest.raises(UnsupportedImageError):
        mask_faces(image, [_face((0.0, 0.0, 4.0, 4.0))], _settings())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_read_only_input_is_accepted(astronaut_rgb, method):
    image = astronaut_rgb.copy()
    image.setflags(write=False)  # the codec hands out read-only frames
    out = mask_faces(image, [_face(FACE_BOX)], _settings(method))
    assert out.flags.writeable
