"""Tests for anon_tasks.imaging.metadata: EXIF by an allow-list, ICC colour tags, JPEG segments."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.imaging.encode import encode_image
from tests.conftest import shared_path
from tests.imaging.helpers import (
    DEFAULT,
    KEEP,
    TAG_DATETIME_ORIGINAL,
    TAG_EXIF_IFD,
    TAG_GPS_IFD,
    TAG_MAKE,
    TAG_MODEL,
    TAG_ORIENTATION,
    decode_awkward,
    mean_abs_diff,
    opened,
    pil_bytes,
    read_awkward,
    round_trip,
)

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


def test_cmyk_icc_profile_is_not_kept(astronaut_rgb: np.ndarray) -> None:
    rgb_icc = opened(read_awkward("icc_profile_big.jpg")).info["icc_profile"]
    cmyk_icc = rgb_icc[:16] + b"CMYK" + rgb_icc[20:]  # a profile claiming the CMYK space
    cmyk = Image.fromarray(astronaut_rgb[:64, :64]).convert("CMYK")
    image = decode_image(pil_bytes(cmyk, "JPEG", icc_profile=cmyk_icc))
    assert image.frames[0].shape == (64, 64, 3)
    assert image.icc_profile is None


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
