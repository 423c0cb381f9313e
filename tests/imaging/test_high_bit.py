"""Tests for anon_tasks.imaging.high_bit: 16-bit pixels read by OpenCV, written as PNG and TIFF."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage, to_detector_rgb
from anon_tasks.imaging.encode import encode_image
from tests.imaging.helpers import (
    DEFAULT,
    decode_awkward,
    mean_abs_diff,
    opened,
    read_awkward,
    round_trip,
    still,
)


@pytest.mark.parametrize(
    "name",
    [
        "astronaut_head_rgb16.png",
        "astronaut_head_rgba16.png",
        "camera_gray16.png",
        "i_trns.png",
        "tiff_16bit_RGBa.tiff",
    ],
)
def test_16bit_files_stay_16bit_and_exact(name: str) -> None:
    image = decode_awkward(name)
    assert image.frames[0].dtype == np.uint16
    np.testing.assert_array_equal(round_trip(image).frames[0], image.frames[0])


@pytest.mark.parametrize(("fmt", "channels"), [(".png", 3), (".png", 4), (".tiff", 3)])
def test_16bit_colour_from_another_writer_decodes_exactly(fmt: str, channels: int) -> None:
    rgb = np.random.default_rng(channels).integers(0, 65536, (9, 11, channels), np.uint16)
    bgr = rgb[..., [2, 1, 0, 3][:channels]]
    ok, encoded = cv2.imencode(fmt, np.ascontiguousarray(bgr))
    assert ok
    frame = decode_image(encoded.tobytes()).frames[0]
    np.testing.assert_array_equal(frame, rgb)  # all 16 bits, RGB order


def test_camera_gray16_keeps_its_full_range(camera_gray: np.ndarray) -> None:
    frame = decode_awkward("camera_gray16.png").frames[0]
    assert frame.min() < 256
    assert frame.max() > 65000  # a naive 16-to-8-bit cast would saturate this to white
    np.testing.assert_array_equal(to_detector_rgb(frame)[..., 0], camera_gray)


def test_premultiplied_16bit_tiff_matches_pillow_8bit() -> None:
    frame = decode_awkward("tiff_16bit_RGBa.tiff").frames[0]
    pillow_8bit = np.asarray(opened(read_awkward("tiff_16bit_RGBa.tiff")).convert("RGBA"))
    assert mean_abs_diff(to_detector_rgb(frame), pillow_8bit[..., :3]) < 4.0


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [3, 4])
def test_icc_profile_survives_16bit(fmt: str, channels: int) -> None:
    icc = opened(read_awkward("tiff_16bit_RGBa.tiff")).info["icc_profile"]
    frame = np.random.default_rng(channels).integers(0, 65536, (9, 11, channels), np.uint16)
    back = round_trip(still(frame, fmt, icc_profile=icc))
    assert back.icc_profile == icc
    np.testing.assert_array_equal(back.frames[0], frame)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_tiff_pages_are_deflated_predicted_and_labelled(channels: int) -> None:
    """Each page: its own little-endian directory, one deflated strip with horizontal
    differencing, alpha labelled unassociated, the ICC profile on every page."""
    import tifffile

    icc = opened(read_awkward("tiff_16bit_RGBa.tiff")).info["icc_profile"]
    shape = (9, 11) if channels == 1 else (9, 11, channels)
    rng = np.random.default_rng(channels)
    frames = tuple(rng.integers(0, 65536, shape, np.uint16) for _ in range(3))
    image = DecodedImage(frames=frames, format="TIFF", icc_profile=icc if channels > 1 else None)
    data = encode_image(image, settings=DEFAULT)
    assert data[:4] == b"II*\x00"
    with tifffile.TiffFile(io.BytesIO(data)) as written:
        assert len(written.pages) == 3
        for page, frame in zip(written.pages, frames, strict=True):
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.predictor == tifffile.PREDICTOR.HORIZONTAL
            assert len(page.dataoffsets) == 1
            assert page.photometric == (
                tifffile.PHOTOMETRIC.MINISBLACK if channels == 1 else tifffile.PHOTOMETRIC.RGB
            )
            assert page.extrasamples == (
                (tifffile.EXTRASAMPLE.UNASSALPHA,) if channels == 4 else ()
            )
            assert page.tags.valueof(34675) == (icc if channels > 1 else None)
            np.testing.assert_array_equal(page.asarray(), frame)
    back = decode_image(data)
    assert back.icc_profile == image.icc_profile
    for before, after in zip(frames, back.frames, strict=True):
        np.testing.assert_array_equal(after, before)
