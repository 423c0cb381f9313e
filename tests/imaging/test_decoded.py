"""Tests for anon_tasks.imaging.decoded: detector input, channel counts, the DecodedImage value."""

from __future__ import annotations

import numpy as np
import pytest

from anon_tasks.imaging.decoded import color_channel_count, to_detector_rgb, with_frames
from tests.imaging.helpers import U8, U16, decode_awkward, still


def test_to_detector_rgb_is_identity_on_uint8_rgb(astronaut_rgb: np.ndarray) -> None:
    for frame in (astronaut_rgb, astronaut_rgb[:, ::-1]):  # contiguous and a strided view
        rgb = to_detector_rgb(frame)
        np.testing.assert_array_equal(rgb, frame)
        assert rgb.dtype == np.uint8
        assert rgb.flags.c_contiguous
    # A contiguous uint8 RGB frame is passed as it is; a strided view is copied.
    assert np.shares_memory(to_detector_rgb(astronaut_rgb), astronaut_rgb)
    assert not np.shares_memory(to_detector_rgb(astronaut_rgb[:, ::-1]), astronaut_rgb)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (np.array([[0, 128, 255]], np.uint8), [[0, 128, 255]]),
        (np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16), [[0, 0, 1, 1, 128, 255]]),
        (np.array([[[7, 0], [9, 255]]], np.uint8), [[7, 9]]),  # gray + alpha: alpha dropped
    ],
)
def test_to_detector_rgb_replicates_gray_and_scales_16bit(
    frame: np.ndarray, expected: list[list[int]]
) -> None:
    rgb = to_detector_rgb(frame)
    assert rgb.shape == (*np.asarray(expected).shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_to_detector_rgb_drops_alpha_without_compositing() -> None:
    frame = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)
    np.testing.assert_array_equal(to_detector_rgb(frame), frame[..., :3])


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [((4, 5), U8, 1), ((4, 5, 2), U8, 1), ((4, 5, 3), U16, 3), ((4, 5, 4), U8, 3)],
)
def test_color_channel_count(shape: tuple[int, ...], dtype: np.dtype, expected: int) -> None:
    assert color_channel_count(np.zeros(shape, dtype)) == expected


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((4, 5, 1), np.uint8),
        np.zeros((4, 5, 5), np.uint8),
        np.zeros((4, 5, 3), np.float32),
        np.zeros((2, 4, 5, 3), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
    ],
    ids=["one-channel", "five-channels", "float", "4d", "empty"],
)
def test_invalid_layouts_are_rejected(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="frame"):
        color_channel_count(frame)
    with pytest.raises(ValueError, match="frame"):
        still(frame, "PNG")


def test_frames_are_read_only_and_with_frames_keeps_metadata() -> None:
    image = decode_awkward("iss634.webp")
    with pytest.raises(ValueError, match="read-only"):
        image.frames[0][0, 0, 0] = 1
    masked = [np.zeros_like(frame) for frame in image.frames]
    replaced = with_frames(image, masked)
    assert replaced.frames[0].sum() == 0
    assert image.frames[0].sum() > 0
    kept = ("format", "icc_profile", "exif", "durations_ms", "loop", "lossless", "progressive")
    for field in kept:
        assert getattr(replaced, field) == getattr(image, field)
    with pytest.raises(ValueError, match="durations"):
        with_frames(image, masked[:-1])  # an animation must keep its frame count
