"""Tests for anon_tasks.imaging.encode and layouts: formats, quality, layouts, frames, refusals."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.errors import ImageEncodeError, UnsupportedImageError
from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.encode import encode_image
from tests.imaging.helpers import (
    DEFAULT,
    LOSSY_MEAN_ABS_DIFF,
    U8,
    U16,
    decode_awkward,
    mean_abs_diff,
    opened,
    pil_bytes,
    psnr,
    read_awkward,
    round_trip,
    still,
)


def is_iso_bmff(data: bytes, brands: tuple[bytes, ...]) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in brands


MAGIC = {
    "JPEG": lambda d: d[:2] == b"\xff\xd8",
    "MPO": lambda d: d[:2] == b"\xff\xd8",
    "PNG": lambda d: d[:8] == b"\x89PNG\r\n\x1a\n",
    "WEBP": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
    "GIF": lambda d: d[:4] == b"GIF8",
    "TIFF": lambda d: d[:4] in (b"II*\x00", b"MM\x00*"),
    "AVIF": lambda d: is_iso_bmff(d, (b"avif", b"avis")),
    "HEIF": lambda d: is_iso_bmff(d, (b"heic", b"heix", b"mif1")),
}


@pytest.mark.parametrize(
    "name",
    [
        "hopper.jpg",
        "sugarshack.mpo",
        "hopper.png",
        "camera_gray16.png",
        "hopper.webp",
        "hopper.gif",
        "hopper.tif",
        "tiff_16bit_RGBa.tiff",
        "hopper.avif",
        "hopper.heif",
    ],
)
def test_output_keeps_the_format_magic(name: str) -> None:
    image = decode_awkward(name)
    assert MAGIC[image.format](encode_image(image, settings=DEFAULT))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_bmp_is_written_as_pillow_reads_it(astronaut_rgb: np.ndarray, mode: str) -> None:
    pixels = np.asarray(Image.fromarray(astronaut_rgb[:40, :56]).convert(mode)).copy()
    if mode == "RGBA":
        pixels[..., 3] = np.arange(56, dtype=np.uint8) * 4  # partial alpha, kept by bit fields
    data = encode_image(still(pixels, "BMP"), settings=DEFAULT)
    with Image.open(io.BytesIO(data)) as written:
        assert written.format == "BMP"
        assert written.mode == mode
        np.testing.assert_array_equal(np.asarray(written), pixels)
    np.testing.assert_array_equal(decode_image(data).frames[0], pixels)


def test_a_face_in_a_bmp_is_masked_in_a_bmp(astronaut_rgb: np.ndarray) -> None:
    from anon_tasks.pipeline.anonymizer import Anonymizer

    result = Anonymizer().anonymize_bytes(pil_bytes(Image.fromarray(astronaut_rgb), "BMP"))
    assert result.format == "BMP"
    assert len(result.faces) == 1
    x1, y1, x2, y2 = (round(value) for value in result.faces[0].xyxy)
    masked = decode_image(result.content)
    assert masked.format == "BMP"
    face = (slice(y1 + 20, y2 - 20), slice(x1 + 15, x2 - 15))
    assert mean_abs_diff(masked.frames[0][face], astronaut_rgb[face]) > 15.0


def test_jpeg_default_quality_is_faithful(astronaut_rgb: np.ndarray) -> None:
    image = still(astronaut_rgb, "JPEG")
    good = round_trip(image).frames[0]
    poor = round_trip(image, OutputSettings(jpeg_quality=30)).frames[0]
    assert psnr(good, astronaut_rgb) > 38.0
    assert psnr(poor, astronaut_rgb) < psnr(good, astronaut_rgb) - 5.0


def test_progressive_jpeg_stays_progressive() -> None:
    image = decode_awkward("astronaut_progressive.jpg")
    assert image.progressive
    assert opened(encode_image(image, settings=DEFAULT)).info.get("progressive")


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_lossless_flag_follows_the_source(astronaut_rgb: np.ndarray, lossless: bool) -> None:
    data = pil_bytes(Image.fromarray(astronaut_rgb[:64, :64]), "WEBP", lossless=lossless)
    image = decode_image(data)
    assert image.lossless is lossless
    back = round_trip(image)
    assert back.lossless is lossless
    if lossless:
        np.testing.assert_array_equal(back.frames[0], image.frames[0])


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF", "TIFF", "JPEG", "PNG"])
def test_gray_stays_gray(camera_gray: np.ndarray, fmt: str) -> None:
    gray = camera_gray[:64, :64]
    image = decode_image(pil_bytes(Image.fromarray(gray), fmt))
    assert image.frames[0].shape == (64, 64)
    back = round_trip(image).frames[0]
    assert back.shape == (64, 64)
    assert mean_abs_diff(back, gray) < LOSSY_MEAN_ABS_DIFF


LAYOUTS = [(), (2,), (3,), (4,)]


@pytest.mark.parametrize(
    ("fmt", "dtype", "channels"),
    [("PNG", dtype, shape) for dtype in (U8, U16) for shape in LAYOUTS]
    + [("TIFF", U8, shape) for shape in LAYOUTS]
    + [("TIFF", U16, shape) for shape in [(), (3,), (4,)]],
)
def test_lossless_formats_keep_every_layout_exactly(
    fmt: str, dtype: np.dtype, channels: tuple[int, ...]
) -> None:
    maximum = np.iinfo(dtype).max
    frame = np.random.default_rng(7).integers(0, maximum + 1, (13, 17, *channels), dtype=dtype)
    back = round_trip(still(frame, fmt)).frames[0]
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, frame)


@pytest.mark.parametrize(
    "name", ["astronaut_rgba8_transparent_stripe.png", "pil123rgba.png", "uncompressed_la.png"]
)
def test_png_alpha_survives_exactly(name: str) -> None:
    image = decode_awkward(name)
    alpha = image.frames[0][..., -1]
    assert alpha.min() < 255  # really transparent somewhere
    np.testing.assert_array_equal(round_trip(image).frames[0][..., -1], alpha)


@pytest.mark.parametrize("name", ["transparent.webp", "transparency.avif"])
def test_lossy_alpha_survives_closely(name: str) -> None:
    image = decode_awkward(name)
    alpha = image.frames[0][..., 3]
    assert alpha.min() == 0
    assert mean_abs_diff(round_trip(image).frames[0][..., 3], alpha) < 2.0


def test_gif_transparency_survives() -> None:
    frame = np.zeros((16, 16, 4), np.uint8)
    frame[..., 0], frame[4:12, 4:12, 3] = 200, 255
    back = round_trip(still(frame, "GIF")).frames[0]
    assert back.shape == (16, 16, 4)
    np.testing.assert_array_equal(back[..., 3], frame[..., 3])
    np.testing.assert_array_equal(back[4:12, 4:12, :3], frame[4:12, 4:12, :3])


@pytest.mark.parametrize(
    ("fmt", "frame"),
    [
        ("JPEG", np.zeros((8, 8, 4), np.uint8)),
        ("JPEG", np.zeros((8, 8, 3), np.uint16)),
        ("WEBP", np.zeros((8, 8), np.uint8)),
        ("GIF", np.zeros((8, 8, 3), np.uint16)),
        ("TIFF", np.zeros((8, 8, 2), np.uint16)),
        ("BMP", np.zeros((8, 8, 2), np.uint8)),
        ("BMP", np.zeros((8, 8, 3), np.uint16)),
    ],
)
def test_layouts_a_format_cannot_hold_are_unsupported(fmt: str, frame: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError, match=r"out\.x"):
        encode_image(still(frame, fmt), settings=DEFAULT, source="out.x")


def test_encoder_failure_is_an_encode_error() -> None:
    too_wide_for_jpeg = np.zeros((1, 70_000), np.uint8)
    with pytest.raises(ImageEncodeError, match=r"wide\.jpg") as caught:
        encode_image(still(too_wide_for_jpeg, "JPEG"), settings=DEFAULT, source="wide.jpg")
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(("source_subsampling", "expected"), [(0, 0), (1, 1), (2, 2)])
def test_jpeg_output_keeps_the_sources_chroma_subsampling(
    astronaut_rgb: np.ndarray, source_subsampling: int, expected: int
) -> None:
    from PIL import JpegImagePlugin

    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, "JPEG", quality=95, subsampling=source_subsampling)
    decoded = decode_image(buffer.getvalue())
    assert decoded.jpeg_subsampling == expected
    with Image.open(io.BytesIO(encode_image(decoded, settings=OutputSettings()))) as written:
        assert JpegImagePlugin.get_sampling(written) == expected


def test_jpeg_output_of_a_png_source_has_full_resolution_chroma(astronaut_rgb) -> None:
    from PIL import JpegImagePlugin

    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, "PNG")
    decoded = dataclasses.replace(decode_image(buffer.getvalue()), format="JPEG")
    assert decoded.jpeg_subsampling is None
    with Image.open(io.BytesIO(encode_image(decoded, settings=OutputSettings()))) as written:
        assert JpegImagePlugin.get_sampling(written) == 0


def test_mpo_gives_both_frames_and_writes_both_back() -> None:
    image = decode_awkward("sugarshack.mpo")
    left, right = image.frames
    assert mean_abs_diff(left, right) > 1.0  # a stereo pair: two different views
    data = encode_image(image, settings=DEFAULT)
    assert opened(data).format == "MPO"
    back = decode_image(data)
    assert len(back.frames) == 2
    for before, after in zip(image.frames, back.frames, strict=True):
        assert mean_abs_diff(after, before) < LOSSY_MEAN_ABS_DIFF


def test_animated_webp_keeps_every_frame_timing_and_loop() -> None:
    image = decode_awkward("iss634.webp")
    source = opened(read_awkward("iss634.webp"))
    assert image.is_animation
    assert image.loop == source.info["loop"]
    assert len(image.durations_ms) == 42
    assert sum(image.durations_ms) > 0
    assert len({frame.tobytes() for frame in image.frames}) == 42  # not frame 0 repeated
    back = round_trip(image)
    assert len(back.frames) == 42
    assert back.durations_ms == image.durations_ms
    assert back.loop == image.loop
    for before, after in zip(image.frames, back.frames, strict=True):
        np.testing.assert_array_equal(after, before)  # lossless source, lossless output


def animation(astronaut: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(astronaut[y : y + 48, 200:248]) for y in (0, 100, 200)]


@pytest.mark.parametrize(
    ("fmt", "tolerance", "loop"),
    [("GIF", 12.0, 0), ("PNG", 0.0, 0), ("WEBP", 4.0, 0), ("AVIF", 4.0, None)],
)
def test_made_animation_round_trips(
    astronaut_rgb: np.ndarray, fmt: str, tolerance: float, loop: int | None
) -> None:
    frames = animation(astronaut_rgb)
    data = pil_bytes(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0
    )
    image = decode_image(data)
    assert len(image.frames) == 3
    assert image.durations_ms == (100, 200, 300)
    assert image.loop == loop  # Pillow reports no loop count for AVIF
    for made, decoded in zip(frames, image.frames, strict=True):
        assert mean_abs_diff(decoded[..., :3], np.asarray(made)) <= tolerance
    back = round_trip(image)
    assert (back.durations_ms, back.loop) == (image.durations_ms, image.loop)
    for before, after in zip(image.frames, back.frames, strict=True):
        assert mean_abs_diff(after, before) <= tolerance


@pytest.mark.parametrize(("fmt", "tolerance"), [("TIFF", 0.0), ("MPO", 6.0), ("HEIF", 6.0)])
def test_made_pages_round_trip(astronaut_rgb: np.ndarray, fmt: str, tolerance: float) -> None:
    frames = animation(astronaut_rgb)
    image = decode_image(pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:]))
    assert len(image.frames) == 3
    assert not image.is_animation
    for made, decoded in zip(frames, image.frames, strict=True):
        assert mean_abs_diff(decoded, np.asarray(made)) <= tolerance
    back = round_trip(image)
    assert len(back.frames) == 3
    for before, after in zip(image.frames, back.frames, strict=True):
        assert mean_abs_diff(after, before) <= tolerance
