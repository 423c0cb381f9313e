"""Tests for the image codec: the awkward corpus, orientation, metadata, bit depth and frames."""

from __future__ import annotations

import dataclasses
import io
import logging
import resource
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from anon_tasks.core.errors import (
    ImageDecodeError,
    ImageEncodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.codec import (
    DecodedImage,
    color_channel_count,
    decode_image,
    encode_image,
    to_detector_rgb,
    with_frames,
)
from tests.conftest import shared_path

DEFAULT = OutputSettings()
KEEP = OutputSettings(keep_metadata=True)
U8, U16 = np.dtype(np.uint8), np.dtype(np.uint16)

TAG_MAKE, TAG_MODEL, TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
TAG_EXIF_IFD, TAG_GPS_IFD, TAG_DATETIME_ORIGINAL = 0x8769, 0x8825, 0x9003


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
#: Mean absolute difference allowed after re-encoding a lossy format at quality 95.
LOSSY_MEAN_ABS_DIFF = 4.0


def read_awkward(name: str) -> bytes:
    return shared_path("awkward", name).read_bytes()


def decode_awkward(name: str, **kwargs: int) -> DecodedImage:
    return decode_image(read_awkward(name), source=name, **kwargs)


def round_trip(image: DecodedImage, output: OutputSettings = DEFAULT) -> DecodedImage:
    return decode_image(encode_image(image, settings=output, source="test"), source="output")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse)


def pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def still(frame: np.ndarray, fmt: str, **fields: object) -> DecodedImage:
    return DecodedImage(frames=(frame,), format=fmt, **fields)


# --- the awkward corpus ---------------------------------------------------------------------


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


# --- orientation ----------------------------------------------------------------------------

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
    with caplog.at_level(logging.WARNING, logger="anon_tasks.imaging.codec"):
        image = decode_awkward("hopper_bad_exif.jpg")
    assert image.frames[0].shape == (500, 500)
    assert any("Corrupt EXIF" in record.getMessage() for record in caplog.records)
    assert all("hopper_bad_exif.jpg" in record.getMessage() for record in caplog.records)


# --- metadata -------------------------------------------------------------------------------

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf'
    b'-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator='
    b'"secret-creator"/></rdf:RDF></x:xmpmeta>'
)


def camera_exif() -> Image.Exif:
    """EXIF as a phone writes it: make, model, capture time and a GPS position."""
    exif = Image.Exif()
    exif[TAG_MAKE] = "TestMake"
    exif[TAG_MODEL] = "TestModel 3000"
    exif[TAG_ORIENTATION] = 1
    exif[TAG_EXIF_IFD] = {TAG_DATETIME_ORIGINAL: "2024:05:01 12:34:56"}
    exif[TAG_GPS_IFD] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif


def photo_with_metadata(astronaut: np.ndarray, fmt: str) -> bytes:
    options: dict[str, object] = {"exif": camera_exif()}
    if fmt in ("JPEG", "WEBP", "AVIF"):
        options["xmp"] = XMP
    if fmt == "JPEG":
        options["comment"] = b"secret comment"
    return pil_bytes(Image.fromarray(astronaut[:96, :96]), fmt, **options)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF"])
def test_metadata_is_stripped_by_default(astronaut_rgb: np.ndarray, fmt: str) -> None:
    source = photo_with_metadata(astronaut_rgb, fmt)
    assert opened(source).getexif().get(TAG_MAKE) == "TestMake"  # the test photo has it
    output = opened(encode_image(decode_image(source), settings=DEFAULT))
    assert "exif" not in output.info
    assert len(output.getexif()) == 0
    assert not {"xmp", "XML:com.adobe.xmp", "comment"} & set(output.info)
    assert b"secret" not in encode_image(decode_image(source), settings=DEFAULT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF"])
def test_keep_metadata_keeps_camera_tags_but_not_gps(astronaut_rgb: np.ndarray, fmt: str) -> None:
    data = encode_image(decode_image(photo_with_metadata(astronaut_rgb, fmt)), settings=KEEP)
    exif = opened(data).getexif()
    assert exif.get(TAG_MAKE) == "TestMake"
    assert exif.get(TAG_MODEL) == "TestModel 3000"
    assert exif.get_ifd(TAG_EXIF_IFD).get(TAG_DATETIME_ORIGINAL) == "2024:05:01 12:34:56"
    assert TAG_GPS_IFD not in exif
    assert exif.get_ifd(TAG_GPS_IFD) == {}
    assert exif.get(TAG_ORIENTATION) in (None, 1)
    assert b"secret" not in data  # neither XMP nor the JPEG comment


def test_keep_metadata_drops_orientation_of_a_turned_photo() -> None:
    data = encode_image(decode_awkward("Portrait_6.jpg"), settings=KEEP)
    exif = opened(data).getexif()
    assert TAG_ORIENTATION not in exif
    assert len(exif) > 0  # resolution tags are kept
    assert decode_image(data).frames[0].shape == (1800, 1200, 3)


@pytest.mark.parametrize("name", ["icc_profile_big.jpg", "xmp_tags_orientation.png"])
def test_icc_profile_survives(name: str) -> None:
    source_icc = opened(read_awkward(name)).info["icc_profile"]
    image = decode_awkward(name)
    assert image.icc_profile == source_icc
    output = opened(encode_image(image, settings=DEFAULT))
    assert output.info.get("icc_profile") == source_icc


def test_icc_profile_of_the_faces_astronaut_survives() -> None:
    data = shared_path("faces", "astronaut.png").read_bytes()
    image = decode_image(data, source="astronaut.png")
    assert image.icc_profile
    assert round_trip(image).icc_profile == image.icc_profile


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [3, 4])
def test_icc_profile_survives_16bit(fmt: str, channels: int) -> None:
    icc = opened(read_awkward("tiff_16bit_RGBa.tiff")).info["icc_profile"]
    frame = np.random.default_rng(channels).integers(0, 65536, (9, 11, channels), np.uint16)
    back = round_trip(still(frame, fmt, icc_profile=icc))
    assert back.icc_profile == icc
    np.testing.assert_array_equal(back.frames[0], frame)


def test_cmyk_icc_profile_is_not_kept(astronaut_rgb: np.ndarray) -> None:
    rgb_icc = opened(read_awkward("icc_profile_big.jpg")).info["icc_profile"]
    cmyk_icc = rgb_icc[:16] + b"CMYK" + rgb_icc[20:]  # a profile claiming the CMYK space
    cmyk = Image.fromarray(astronaut_rgb[:64, :64]).convert("CMYK")
    image = decode_image(pil_bytes(cmyk, "JPEG", icc_profile=cmyk_icc))
    assert image.frames[0].shape == (64, 64, 3)
    assert image.icc_profile is None


# --- formats --------------------------------------------------------------------------------


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


# --- bit depth and alpha --------------------------------------------------------------------


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


def test_i_trns_key_becomes_alpha() -> None:
    stored = np.asarray(opened(read_awkward("i_trns.png")))
    frame = decode_awkward("i_trns.png").frames[0]
    np.testing.assert_array_equal(frame[..., 0], stored)
    np.testing.assert_array_equal(frame[..., 1] == 0, stored == 255)
    assert set(np.unique(frame[..., 1])) == {0, 65535}


def test_premultiplied_16bit_tiff_matches_pillow_8bit() -> None:
    frame = decode_awkward("tiff_16bit_RGBa.tiff").frames[0]
    pillow_8bit = np.asarray(opened(read_awkward("tiff_16bit_RGBa.tiff")).convert("RGBA"))
    assert mean_abs_diff(to_detector_rgb(frame), pillow_8bit[..., :3]) < 4.0


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


# --- frames ---------------------------------------------------------------------------------


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


# --- pixel limits and bombs -----------------------------------------------------------------


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


def test_pillow_global_state_is_left_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    filters_before = list(warnings.filters)
    # Pillow's limit of 1234 pixels would refuse hopper; truncated loading would pass the JPEG.
    assert decode_awkward("hopper.jpg").frames[0].shape == (128, 128, 3)
    with pytest.raises(ImageDecodeError):
        decode_awkward("truncated_jpeg.jpg")
    with pytest.raises(ImageTooLargeError):
        decode_awkward("decompression_bomb.gif")
    assert Image.MAX_IMAGE_PIXELS == 1234
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert list(warnings.filters) == filters_before


def test_concurrent_decodes_agree_with_serial_ones() -> None:
    names = ["hopper.jpg", "hopper.png", "iss634.webp", "camera_gray16.png", "hopper.gif"] * 4
    serial = [decode_awkward(name).frames[-1] for name in names]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda name: decode_awkward(name).frames[-1], names))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)
    assert Image.MAX_IMAGE_PIXELS is not None


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
    from tests.test_roundtrip import tiff_file

    data = bytearray(tiff_file([np.zeros((4, 6, 3), np.uint16)]))
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    data[ifd + 2 + 12 * count : ifd + 6 + 12 * count] = ifd.to_bytes(4, "little")  # to itself
    with pytest.raises(ImageDecodeError, match=r"loop\.tif"):
        decode_image(bytes(data), source="loop.tif")


# --- fuzzing --------------------------------------------------------------------------------


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


# --- detector input, channels and the DecodedImage value ------------------------------------


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


# --- encoding errors ------------------------------------------------------------------------


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


def test_jpeg_carries_a_large_icc_profile_and_exif_in_segments(astronaut_rgb) -> None:
    """Profiles over one segment's 64 KiB are split and numbered as the ICC spec says."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big_profile = srgb + bytes(150_000)  # padding after the profile's own data
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    image = DecodedImage(
        frames=(astronaut_rgb,), format="JPEG", icc_profile=big_profile, exif=exif.tobytes()
    )
    encoded = encode_image(image, settings=OutputSettings(keep_metadata=True))
    assert encoded.count(b"ICC_PROFILE\x00") == 3
    with Image.open(io.BytesIO(encoded)) as written:
        assert written.info["icc_profile"] == big_profile
        assert written.getexif()[0x010F] == "CameraMaker"
        assert mean_abs_diff(np.asarray(written), astronaut_rgb) < 3.0


def test_kept_metadata_carries_no_vendor_blob_or_unknown_tag() -> None:
    """keep_metadata is an allow-list: a camera's raw preview (a face) in a vendor tag or an
    unknown Exif tag never reaches the output."""
    from skimage import data

    face = io.BytesIO()
    Image.fromarray(data.astronaut()[50:190, 170:290].copy()).save(face, format="JPEG")
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x002E] = face.getvalue()  # Panasonic JpgFromRaw
    exif.get_ifd(0x8769).update({0x829A: (1, 250), 0xEA1C: face.getvalue()})
    source = io.BytesIO()
    Image.fromarray(data.astronaut()).save(source, format="JPEG", exif=exif.tobytes())
    image = decode_image(source.getvalue())
    written = encode_image(image, settings=OutputSettings(keep_metadata=True))
    assert face.getvalue()[:200] not in written
    with Image.open(io.BytesIO(written)) as output:
        kept = output.getexif()
        assert kept.get(0x010F) == "Camera maker"
        assert 0x002E not in kept
        assert 0xEA1C not in kept.get_ifd(0x8769)


def test_an_icc_profile_loses_private_tags_that_could_carry_a_face() -> None:
    from PIL import ImageCms
    from skimage import data

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    face = io.BytesIO()
    Image.fromarray(data.astronaut()[50:190, 170:290].copy()).save(face, format="JPEG")
    payload = face.getvalue()
    count = int.from_bytes(srgb[128:132], "big")
    table_end = 132 + 12 * count
    # Append a private tag: shift every offset by the new table entry, add the payload.
    entries = bytearray()
    for index in range(count):
        entry = srgb[132 + 12 * index : 144 + 12 * index]
        offset = int.from_bytes(entry[4:8], "big") + 12
        entries += entry[:4] + offset.to_bytes(4, "big") + entry[8:12]
    body = srgb[table_end:]
    private_at = table_end + 12 + len(body)
    entries += b"priv" + private_at.to_bytes(4, "big") + len(payload).to_bytes(4, "big")
    profile = bytearray(srgb[:128]) + (count + 1).to_bytes(4, "big") + entries + body + payload
    profile[0:4] = len(profile).to_bytes(4, "big")
    source = io.BytesIO()
    Image.fromarray(data.astronaut()).save(source, format="JPEG", icc_profile=bytes(profile))
    for keep in (False, True):
        written = encode_image(
            decode_image(source.getvalue()), settings=OutputSettings(keep_metadata=keep)
        )
        assert payload[100:400] not in written
        with Image.open(io.BytesIO(written)) as output:
            kept = output.info.get("icc_profile")
        assert kept is not None  # the colour tags stay
        ImageCms.ImageCmsProfile(io.BytesIO(kept))  # and still read as a profile
