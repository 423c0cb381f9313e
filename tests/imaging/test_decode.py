"""Tests for anon_tasks.imaging.decode: the awkward corpus, orientation, keys, limits, fuzzing."""

from __future__ import annotations

import logging
import resource
import time
import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from anon_tasks.core.errors import ImageDecodeError, ImageError, ImageTooLargeError
from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import with_frames
from anon_tasks.imaging.encode import encode_image
from tests.conftest import shared_path
from tests.imaging.helpers import (
    DEFAULT,
    KEEP,
    LOSSY_MEAN_ABS_DIFF,
    TAG_ORIENTATION,
    U8,
    U16,
    decode_awkward,
    mean_abs_diff,
    opened,
    pil_bytes,
    read_awkward,
    round_trip,
    still,
)


class Decodes(NamedTuple):
    """What decoding one corpus file must give: format, frame count, first frame shape, dtype."""

    format: str
    shape: tuple[int, ...]
    dtype: np.dtype = U8
    frames: int = 1


def jpeg(shape: tuple[int, ...]) -> Decodes:
    return Decodes("JPEG", shape)


# Every file of shared/data/awkward and what decode_image must do with it. Shapes are upright
# (EXIF and AVIF orientation applied, XMP ignored): Portrait_6 is stored 1800 wide and comes out
# 1200 wide.
AWKWARD: dict[str, Decodes | type[ImageError]] = {
    "32-lens_data.jpeg": jpeg((133, 200, 3)),
    "IMG_5195.HEIC": Decodes("HEIF", (3313, 2566, 3)),
    "Landscape_8.jpg": jpeg((1200, 1800, 3)),
    "Portrait_6.jpg": jpeg((1800, 1200, 3)),
    "app13-multiple.jpg": jpeg((160, 256, 3)),
    "astronaut_cmyk.jpg": jpeg((512, 512, 3)),
    "astronaut_exif_orientation_2.jpg": jpeg((512, 512, 3)),
    "astronaut_exif_orientation_3.jpg": jpeg((512, 512, 3)),
    "astronaut_exif_orientation_6.jpg": jpeg((512, 512, 3)),
    "astronaut_exif_orientation_8.jpg": jpeg((512, 512, 3)),
    "astronaut_gray.jpg": jpeg((512, 512)),
    "astronaut_head_rgb16.png": Decodes("PNG", (256, 256, 3), U16),
    "astronaut_head_rgba16.png": Decodes("PNG", (256, 256, 4), U16),
    "astronaut_lossy.webp": Decodes("WEBP", (512, 512, 3)),
    "astronaut_progressive.jpg": jpeg((512, 512, 3)),
    "astronaut_rgba8_transparent_stripe.png": Decodes("PNG", (512, 512, 4)),
    "astronaut_tiled_6144x3072.jpg": jpeg((3072, 6144, 3)),
    "broken.png": ImageDecodeError,
    "broken_data_stream.png": ImageDecodeError,
    "camera_gray16.png": Decodes("PNG", (512, 512), U16),
    "decompression_bomb.gif": ImageTooLargeError,
    "exif_imagemagick_orientation.png": Decodes("PNG", (512, 512, 3)),
    "flower.webp": Decodes("WEBP", (360, 480, 3)),
    "hopper.avif": Decodes("AVIF", (128, 128, 3)),
    "hopper.gif": Decodes("GIF", (128, 128, 3)),
    "hopper.heif": Decodes("HEIF", (128, 128, 3)),
    "hopper.jpg": jpeg((128, 128, 3)),
    "hopper.png": Decodes("PNG", (128, 128, 3)),
    "hopper.tif": Decodes("TIFF", (128, 128, 3)),
    "hopper.webp": Decodes("WEBP", (128, 128, 3)),
    "hopper_bad_exif.jpg": jpeg((500, 500)),
    "hopper_gray.jpg": jpeg((128, 128)),
    "hopper_orientation_2.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_3.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_4.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_5.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_6.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_6.webp": Decodes("WEBP", (128, 128, 3)),
    "hopper_orientation_7.jpg": jpeg((128, 128, 3)),
    "hopper_orientation_8.jpg": jpeg((128, 128, 3)),
    "i_trns.png": Decodes("PNG", (64, 64, 2), U16),  # 16-bit gray + tRNS key -> alpha
    "icc_profile_big.jpg": jpeg((250, 425, 3)),
    "iss634.webp": Decodes("WEBP", (245, 245, 3), U8, 42),  # every canvas is opaque
    "junk_jpeg_header.jpg": jpeg((768, 1024, 3)),
    "pil123rgba.png": Decodes("PNG", (150, 162, 4)),
    "pil_sample_cmyk.jpg": jpeg((100, 100, 3)),
    "png_decompression_dos.png": ImageDecodeError,
    "portrait_6.jpg": jpeg((600, 450, 3)),
    "rot1mir0.avif": Decodes("AVIF", (427, 640, 3)),
    "samplefilehub.heif": Decodes("HEIF", (426, 640, 3)),
    "sugarshack.mpo": Decodes("MPO", (480, 640, 3), U8, 2),
    "tiff_16bit_RGBa.tiff": Decodes("TIFF", (40, 100, 4), U16),
    "transparency.avif": Decodes("AVIF", (64, 64, 4)),
    "transparent.webp": Decodes("WEBP", (150, 200, 4)),
    "truncated_image.png": ImageDecodeError,
    "truncated_jpeg.jpg": ImageDecodeError,
    "uncompressed_la.png": Decodes("PNG", (128, 128, 2)),
    "xmp_tags_orientation.png": Decodes("PNG", (268, 326, 4)),
}


DECODABLE = sorted(name for name, outcome in AWKWARD.items() if isinstance(outcome, Decodes))
REFUSED = sorted(name for name, outcome in AWKWARD.items() if not isinstance(outcome, Decodes))

#: Formats whose round trip must give the very same pixels (GIF: the corpus GIF is paletted).
LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "GIF"})


def test_every_awkward_file_has_an_expected_outcome() -> None:
    folder = shared_path("awkward")
    assert sorted(path.name for path in folder.iterdir()) == sorted(AWKWARD)


@pytest.mark.parametrize("name", DECODABLE)
def test_awkward_file_decodes_to_expected_layout(name: str) -> None:
    expected = AWKWARD[name]
    assert isinstance(expected, Decodes)
    image = decode_awkward(name)
    assert image.format == expected.format
    assert len(image.frames) == expected.frames
    for frame in image.frames:
        assert frame.shape == expected.shape
        assert frame.dtype == expected.dtype
        assert frame.flags.c_contiguous
    assert image.size_wh == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("name", REFUSED)
def test_awkward_file_is_refused_with_its_name(name: str) -> None:
    expected = AWKWARD[name]
    assert isinstance(expected, type)
    with pytest.raises(expected) as caught:
        decode_awkward(name)
    assert type(caught.value) is expected
    assert caught.value.source == name
    assert name in str(caught.value)
    assert caught.value.__cause__ is not None or expected is ImageTooLargeError


@pytest.mark.parametrize("name", DECODABLE)
def test_awkward_file_round_trips_with_same_layout(name: str) -> None:
    source = decode_awkward(name)
    # A 512-px corner keeps the big files (19 MP JPEG, 8 MP HEIC) fast; metadata is unchanged.
    image = with_frames(source, [frame[:512, :512] for frame in source.frames])
    data = encode_image(image, settings=DEFAULT, source=name)
    back = decode_image(data, source=name)
    assert back.format == image.format
    assert len(back.frames) == len(image.frames)
    assert back.durations_ms == image.durations_ms
    for before, after in zip(image.frames, back.frames, strict=True):
        assert after.shape == before.shape
        assert after.dtype == before.dtype
        if image.format in LOSSLESS_FORMATS or image.lossless:
            np.testing.assert_array_equal(after, before)
        else:
            assert mean_abs_diff(after, before) < LOSSY_MEAN_ABS_DIFF


HOPPER_ORIENTED = [f"hopper_orientation_{n}.jpg" for n in range(2, 9)] + [
    "hopper_orientation_6.webp"
]
ASTRONAUT_ORIENTED = [f"astronaut_exif_orientation_{n}.jpg" for n in (2, 3, 6, 8)]
#: Mean absolute difference between an upright re-encoded JPEG and its reference: JPEG noise
#: is about 5 on the small hopper; a wrongly turned image is above 70.
UPRIGHT_TOLERANCE = 8.0


@pytest.mark.parametrize("name", HOPPER_ORIENTED)
def test_hopper_orientation_is_applied(name: str) -> None:
    reference = decode_awkward("hopper.jpg").frames[0]
    assert mean_abs_diff(decode_awkward(name).frames[0], reference) < UPRIGHT_TOLERANCE


@pytest.mark.parametrize("name", ASTRONAUT_ORIENTED)
def test_astronaut_orientation_is_applied(name: str, astronaut_rgb: np.ndarray) -> None:
    assert mean_abs_diff(decode_awkward(name).frames[0], astronaut_rgb) < 3.0


@pytest.mark.parametrize("output", [DEFAULT, KEEP], ids=["strip", "keep"])
@pytest.mark.parametrize("name", [*HOPPER_ORIENTED, *ASTRONAUT_ORIENTED, "Portrait_6.jpg"])
def test_output_has_no_orientation_tag(name: str, output: OutputSettings) -> None:
    image = decode_awkward(name)
    data = encode_image(image, settings=output, source=name)
    assert opened(data).getexif().get(TAG_ORIENTATION) is None
    assert decode_image(data).frames[0].shape == image.frames[0].shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_matches_pillow_transpose(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[TAG_ORIENTATION] = orientation
    data = pil_bytes(Image.fromarray(stored), "PNG", exif=exif)  # lossless: exact comparison
    expected = np.asarray(ImageOps.exif_transpose(opened(data)))
    np.testing.assert_array_equal(decode_image(data).frames[0], expected)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        # irot 1 (90 degrees anticlockwise) then imir 0 (top-bottom): a transpose. Pillow
        # reports it as EXIF orientation 5 and leaves the pixels stored as they are.
        ("rot1mir0.avif", lambda a: a.swapaxes(0, 1)),
        # XMP tiff:Orientation 3 and ImageMagick's "Raw profile type exif" text chunk (also 3):
        # browsers ignore both, so the pixels stay as stored.
        ("xmp_tags_orientation.png", lambda a: a),
        ("exif_imagemagick_orientation.png", lambda a: a),
    ],
)
def test_container_orientation_follows_browsers(name: str, fix: object) -> None:
    stored = opened(read_awkward(name))
    stored_pixels = np.asarray(stored.convert(stored.mode))
    assert callable(fix)
    np.testing.assert_array_equal(decode_awkward(name).frames[0], fix(stored_pixels))


def test_corrupt_exif_is_logged_and_read_as_upright(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="anon_tasks.imaging"):
        image = decode_awkward("hopper_bad_exif.jpg")
    assert image.frames[0].shape == (500, 500)
    assert any("Corrupt EXIF" in record.getMessage() for record in caplog.records)
    assert all("hopper_bad_exif.jpg" in record.getMessage() for record in caplog.records)


def test_i_trns_key_becomes_alpha() -> None:
    stored = np.asarray(opened(read_awkward("i_trns.png")))
    frame = decode_awkward("i_trns.png").frames[0]
    np.testing.assert_array_equal(frame[..., 0], stored)
    np.testing.assert_array_equal(frame[..., 1] == 0, stored == 255)
    assert set(np.unique(frame[..., 1])) == {0, 65535}


@pytest.mark.parametrize(
    ("mode", "key", "expected_shape"),
    [("L", 0, (8, 32, 2)), ("RGB", (0, 0, 0), (8, 32, 4)), ("P", 0, (8, 32, 4))],
)
def test_png_transparency_key_becomes_alpha(
    mode: str, key: int | tuple[int, ...], expected_shape: tuple[int, ...]
) -> None:
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))  # first column is the key
    source = Image.fromarray(ramp).convert(mode)
    frame = decode_image(pil_bytes(source, "PNG", transparency=key)).frames[0]
    assert frame.shape == expected_shape
    np.testing.assert_array_equal(frame[..., -1] == 0, ramp == 0)
    np.testing.assert_array_equal(round_trip(still(frame, "PNG")).frames[0], frame)


def test_bilevel_becomes_gray_0_or_255() -> None:
    bits = np.array([[0, 255, 0], [255, 255, 0]], np.uint8)
    frame = decode_image(pil_bytes(Image.fromarray(bits).convert("1"), "PNG")).frames[0]
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, bits)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = read_awkward("decompression_bomb.gif")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match="65535x66601"):
            decode_image(data, source="decompression_bomb.gif")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 10 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 2**10  # KiB


@pytest.mark.parametrize(
    ("name", "pixels"),
    [("hopper.jpg", 128 * 128), ("iss634.webp", 245 * 245 * 42), ("sugarshack.mpo", 640 * 480 * 2)],
)
def test_max_pixels_counts_every_frame(name: str, pixels: int) -> None:
    assert len(decode_awkward(name, max_pixels=pixels).frames) >= 1
    with pytest.raises(ImageTooLargeError) as caught:
        decode_awkward(name, max_pixels=pixels - 1)
    assert name in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n",
        # A PNG whose header declares zero width.
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x00\x00\x00\x00\x01\x08\x02\x00\x00\x00"
        b"\x00\x00\x00\x00",
    ],
    ids=["empty", "text", "signature-only", "zero-width"],
)
def test_non_images_raise_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=r"made-up\.png"):
        decode_image(data, source="made-up.png")


def test_tiff_directory_loop_is_a_decode_error() -> None:
    from tests.imaging.test_roundtrip import tiff_file

    data = bytearray(tiff_file([np.zeros((4, 6, 3), np.uint16)]))
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    data[ifd + 2 + 12 * count : ifd + 6 + 12 * count] = ifd.to_bytes(4, "little")  # to itself
    with pytest.raises(ImageDecodeError, match=r"loop\.tif"):
        decode_image(bytes(data), source="loop.tif")


def made_jpeg() -> bytes:
    from skimage import data

    return pil_bytes(Image.fromarray(data.astronaut()[150:214, 150:214]), "JPEG", quality=90)


FUZZ_SEEDS = [
    "hopper.png",
    "hopper.jpg",
    "hopper.gif",
    "hopper.tif",
    "hopper.webp",
    "astronaut_head_rgb16.png",  # the OpenCV 16-bit path
    "sugarshack.mpo",
    "made",
]


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
@settings(max_examples=20, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8),
    keep=st.one_of(st.none(), st.floats(0.05, 1.0)),
)
def test_mutated_files_decode_or_raise_image_error(
    seed: str, edits: list[tuple[int, int]], keep: float | None
) -> None:
    original = made_jpeg() if seed == "made" else read_awkward(seed)
    data = bytearray(original)
    for position, value in edits:
        data[position % len(data)] = value
    if keep is not None:
        data = data[: max(1, int(len(data) * keep))]
    try:
        image = decode_image(bytes(data), source="fuzz", max_pixels=4_000_000)
    except ImageError as exc:
        refused: ImageError | None = exc
    else:
        refused = None
        assert all(frame.size > 0 for frame in image.frames)
    assert refused is None or refused.source == "fuzz"
