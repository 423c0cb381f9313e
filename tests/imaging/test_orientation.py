"""Invariant 3: orientation is applied exactly once, the way browsers apply it.

For every decoder path (Pillow stills and animations, OpenCV's 16-bit path, pillow-heif and
libavif), a real face is stored turned by the inverse of orientation k and tagged k, for every
k from 1 to 8. Decoding must give the upright face, and the product path
(``Anonymizer().anonymize_bytes``) must write an upright image whose face is masked and whose
other pixels are untouched. Orientations browsers ignore (XMP, ImageMagick's PNG text profile,
EXIF inside HEIF/AVIF) must leave the pixels as stored, with the face masked where it is stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, PngImagePlugin

from anon_tasks.imaging.decode import decode_image
from anon_tasks.pipeline.anonymizer import Anonymizer
from tests.imaging.test_roundtrip import (
    display_difference,
    displayed,
    pil_file,
    png_file,
    tiff_file,
)

TAG_ORIENTATION = 0x0112

#: Stored pixels -> upright pixels for each EXIF orientation, as the EXIF spec defines them.
TO_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # transversed
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees anticlockwise
}
#: Upright pixels -> stored pixels: the inverse transforms (6 and 8 undo each other).
TO_STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    k: TO_UPRIGHT[{6: 8, 8: 6}.get(k, k)] for k in TO_UPRIGHT
}

#: The astronaut's head, 160 rows x 120 columns (not square, so a wrong turn changes shape).
FACE_CROP = (slice(30, 190), slice(160, 280))
#: The face's box in the crop (x1, y1, x2, y2), as CenterFace finds it upright.
FACE_BOX = (20, 28, 111, 152)
#: A masked face differs from the original by far more than this in the box's central half.
MASKED_MIN = 15.0
#: Mean absolute difference (0-255 scale) a lossy path may add per encode, and the most a
#: lossless one may (none).
LOSSY = 5.0


def astronaut_head() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[FACE_CROP])


HEAD = astronaut_head()


def upright_frames(layout: str, count: int) -> tuple[np.ndarray, ...]:
    """``count`` upright faces in ``layout``, each with its own faint noise (so encoders
    keep every frame)."""
    frames = []
    for index in range(count):
        rng = np.random.default_rng(index)
        rgb = np.clip(HEAD.astype(np.int32) + rng.integers(-2, 3, HEAD.shape), 0, 255)
        pixels = rgb.astype(np.uint8)
        if layout.startswith("gray"):
            pixels = (rgb @ np.array([299, 587, 114]) // 1000).astype(np.uint8)
        if layout.startswith("rgba"):
            alpha = np.full(pixels.shape[:2], 255, np.uint8)
            alpha[:8] = 0  # a transparent band above the face
            pixels = np.dstack([pixels, alpha])
        if layout.endswith("16"):
            low = rng.integers(0, 256, pixels.shape)
            pixels = (pixels.astype(np.uint32) * 256 + low).astype(np.uint16)
        frames.append(pixels)
    return tuple(frames)


#: An unused EXIF tag that ``patched_exif_orientation`` renames to Orientation in a file.
TAG_SPARE = 0x0113


def exif_block(orientation: int | None, spare: int | None = None) -> bytes:
    """An EXIF block (with its ``Exif`` header) holding an Orientation and/or the spare tag."""
    exif = Image.Exif()
    if orientation is not None:
        exif[TAG_ORIENTATION] = orientation
    if spare is not None:
        exif[TAG_SPARE] = spare
    return exif.tobytes()


def raw_exif(orientation: int) -> bytes:
    """The TIFF structure of an EXIF block, without the APP1 ``Exif`` header (PNG eXIf)."""
    return exif_block(orientation).removeprefix(b"Exif\x00\x00")


def xmp_packet(orientation: int) -> bytes:
    return (
        b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
        + str(orientation).encode()
        + b'"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


# --- the decoder paths ----------------------------------------------------------------------


def images(frames: Sequence[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]


def pillow_writer(fmt: str, **options: object) -> Callable[[Sequence[np.ndarray], int], bytes]:
    def write(stored: Sequence[np.ndarray], orientation: int) -> bytes:
        extra: dict[str, object] = {"exif": exif_block(orientation)}
        if fmt == "TIFF":
            extra = {"tiffinfo": {TAG_ORIENTATION: orientation}}
        if len(stored) > 1 and fmt in ("WEBP", "PNG", "GIF", "AVIF"):
            extra |= {"duration": [100] * len(stored), "loop": 0}
        return pil_file(images(stored), fmt, **extra, **options)

    return write


def png_writer(depth: int) -> Callable[[Sequence[np.ndarray], int], bytes]:
    def write(stored: Sequence[np.ndarray], orientation: int) -> bytes:
        channels = 1 if stored[0].ndim == 2 else stored[0].shape[2]
        colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
        durations = [100] * len(stored)
        exif = raw_exif(orientation)
        return png_file(
            stored, depth=depth, colour_type=colour_type, exif=exif, durations_ms=durations
        )

    return write


def tiff_writer(stored: Sequence[np.ndarray], orientation: int) -> bytes:
    return tiff_file(stored, orientation=orientation)


@dataclass(frozen=True)
class DecoderPath:
    """A format, layout and frame count that reaches one of the codec's decoder paths."""

    id: str
    layout: str
    write: Callable[[Sequence[np.ndarray], int], bytes]
    frames: int = 1
    lossless: bool = True

    @property
    def tolerance(self) -> float:
        return 0.0 if self.lossless else LOSSY


PATHS = [
    # Pillow stills.
    DecoderPath("jpeg-gray8", "gray8", pillow_writer("JPEG", quality=95), lossless=False),
    DecoderPath("jpeg-rgb8", "rgb8", pillow_writer("JPEG", quality=95), lossless=False),
    DecoderPath("png-gray8", "gray8", png_writer(8)),
    DecoderPath("png-rgb8", "rgb8", png_writer(8)),
    DecoderPath("png-rgba8", "rgba8", png_writer(8)),
    DecoderPath("png-gray16", "gray16", png_writer(16)),
    DecoderPath("tiff-gray8", "gray8", pillow_writer("TIFF")),
    DecoderPath("tiff-rgb8", "rgb8", pillow_writer("TIFF", compression="tiff_adobe_deflate")),
    DecoderPath(
        "tiff-rgb8-jpeg",
        "rgb8",
        pillow_writer("TIFF", compression="jpeg", quality=95),
        lossless=False,
    ),
    DecoderPath("tiff-gray16", "gray16", pillow_writer("TIFF")),
    DecoderPath("webp-rgb8-lossless", "rgb8", pillow_writer("WEBP", lossless=True)),
    DecoderPath("webp-rgba8-lossless", "rgba8", pillow_writer("WEBP", lossless=True, exact=True)),
    DecoderPath("webp-rgb8-lossy", "rgb8", pillow_writer("WEBP", quality=95), lossless=False),
    # Pillow pages and animations.
    DecoderPath("tiff-rgb8-pages", "rgb8", pillow_writer("TIFF"), frames=3),
    DecoderPath("apng-rgb8", "rgb8", png_writer(8), frames=3),
    DecoderPath("apng-gray16", "gray16", png_writer(16), frames=3),
    DecoderPath("webp-rgb8-anim", "rgb8", pillow_writer("WEBP", lossless=True), frames=3),
    DecoderPath("mpo-rgb8", "rgb8", pillow_writer("MPO", quality=95), frames=2, lossless=False),
    # OpenCV: 16-bit colour.
    DecoderPath("png-rgb16", "rgb16", png_writer(16)),
    DecoderPath("png-rgba16", "rgba16", png_writer(16)),
    DecoderPath("tiff-rgb16", "rgb16", tiff_writer),
    DecoderPath("tiff-rgba16", "rgba16", tiff_writer),
    DecoderPath("tiff-rgb16-pages", "rgb16", tiff_writer, frames=3),
    # pillow-heif (irot/imir written from the EXIF tag, which it also keeps) and libavif.
    DecoderPath("heif-rgb8", "rgb8", pillow_writer("HEIF", quality=95), lossless=False),
    DecoderPath("heif-gray8", "gray8", pillow_writer("HEIF", quality=95), lossless=False),
    DecoderPath(
        "heif-rgb8-pages", "rgb8", pillow_writer("HEIF", quality=95), frames=3, lossless=False
    ),
    DecoderPath("avif-rgb8", "rgb8", pillow_writer("AVIF", quality=95), lossless=False),
    DecoderPath("avif-rgba8", "rgba8", pillow_writer("AVIF", quality=95), lossless=False),
    # Not covered: animated AVIF with irot/imir (Pillow's encoder crashes writing one).
]


# --- checks ---------------------------------------------------------------------------------


def box_masks(
    shape: tuple[int, ...], to_view: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The face box's central half and everything 12 px beyond the box, in a view of the
    upright frame (``to_view`` turns upright pixels into the view's)."""
    x1, y1, x2, y2 = FACE_BOX
    width, height = x2 - x1, y2 - y1
    core = np.zeros(shape[:2], bool)
    core[y1 + height // 4 : y2 - height // 4, x1 + width // 4 : x2 - width // 4] = True
    outside = np.ones(shape[:2], bool)
    outside[max(0, y1 - 12) : y2 + 12, max(0, x1 - 12) : x2 + 12] = False
    return to_view(core), to_view(outside)


def region_difference(one: np.ndarray, other: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute colour difference (0-255 scale) over ``region``."""
    assert one.shape[:2] == other.shape[:2] == region.shape, (one.shape, other.shape)
    colour = np.abs(displayed(one)[..., :3] - displayed(other)[..., :3]).mean(axis=2)
    return float(colour[region].mean())


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer()


def assert_masked_in_view(
    content: bytes,
    anonymizer: Anonymizer,
    views: Sequence[np.ndarray],
    to_view: Callable[[np.ndarray], np.ndarray],
    tolerance: float,
) -> None:
    """Run the product path and check each output frame: the shape of ``views``, the face
    (where ``to_view`` puts it) masked, everything around it kept."""
    result = anonymizer.anonymize_bytes(content, source="oriented")
    assert {face.frame for face in result.faces} == set(range(len(views)))
    written = decode_image(result.content, source="written")
    assert len(written.frames) == len(views)
    for out, original in zip(written.frames, views, strict=True):
        assert out.shape == original.shape  # upright: not turned, not turned twice
        core, outside = box_masks(HEAD.shape, to_view)
        assert region_difference(out, original, core) > MASKED_MIN
        assert region_difference(out, original, outside) <= 2 * tolerance + 0.5
    with Image.open(io.BytesIO(result.content)) as output:
        assert output.getexif().get(TAG_ORIENTATION) in (None, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("path", PATHS, ids=[path.id for path in PATHS])
def test_orientation_is_applied_once(
    path: DecoderPath, orientation: int, anonymizer: Anonymizer
) -> None:
    upright = upright_frames(path.layout, path.frames)
    stored = [np.ascontiguousarray(TO_STORED[orientation](frame)) for frame in upright]
    content = path.write(stored, orientation)

    # (a) Decoded frames are the upright originals, within the format's loss.
    image = decode_image(content, source=path.id)
    assert len(image.frames) == path.frames
    for got, want in zip(image.frames, upright, strict=True):
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        if path.lossless:
            np.testing.assert_array_equal(got, want)
        else:
            assert display_difference(got, want) < path.tolerance

    # (b) The product path masks the face of the upright original and writes it upright.
    assert_masked_in_view(content, anonymizer, upright, lambda a: a, path.tolerance)


@settings(max_examples=40, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    orientation=st.integers(1, 8),
    top=st.integers(0, 40),
    left=st.integers(0, 40),
    height=st.integers(9, 60),
    width=st.integers(9, 60),
)
def test_any_size_decodes_upright(
    path: DecoderPath, orientation: int, top: int, left: int, height: int, width: int
) -> None:
    """Odd and uneven sizes: the turn must not lose or shift a row or column."""
    upright = [
        frame[top : top + height, left : left + width].copy()
        for frame in upright_frames(path.layout, path.frames)
    ]
    if path.layout.startswith("rgba"):
        for frame in upright:
            frame[:2, :, 3] = 0  # keep some transparency, or encoders drop the alpha channel
    stored = [np.ascontiguousarray(TO_STORED[orientation](frame)) for frame in upright]
    image = decode_image(path.write(stored, orientation), source=path.id)
    for got, want in zip(image.frames, upright, strict=True):
        assert got.shape == want.shape
        if path.lossless:
            np.testing.assert_array_equal(got, want)
        else:
            assert display_difference(got, want) < 2 * path.tolerance


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_tables_match_pillows_exif_transpose(orientation: int) -> None:
    """The test's own reading of the EXIF spec agrees with Pillow's."""
    stored = TO_STORED[orientation](HEAD)
    image = Image.fromarray(np.ascontiguousarray(stored))
    image.getexif()[TAG_ORIENTATION] = orientation
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(image)), HEAD)
    np.testing.assert_array_equal(TO_UPRIGHT[orientation](stored), HEAD)


# --- orientations that browsers ignore ------------------------------------------------------

#: The face stored sideways (turned 90 degrees anticlockwise); orientation 6 would turn it
#: upright, so a decoder that obeys an ignored tag changes the shape.
SIDEWAYS: Callable[[np.ndarray], np.ndarray] = TO_STORED[6]


def xmp_png(stored: np.ndarray) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(6).decode())
    return pil_file([Image.fromarray(stored)], "PNG", pnginfo=info)


def imagemagick_png(stored: np.ndarray) -> bytes:
    """ImageMagick's legacy EXIF text profile (which Pillow reads, and browsers do not)."""
    payload = raw_exif(6)
    text = f"\nexif\n{len(payload) + 6:8d}\n" + (b"Exif\x00\x00" + payload).hex() + "\n"
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    return pil_file([Image.fromarray(stored)], "PNG", pnginfo=info)


def patched_exif_orientation(data: bytes, orientation: int) -> bytes:
    """A file whose EXIF block held tag 0x0113 = ``orientation``, with the tag renamed 0x0112:
    an EXIF Orientation that no encoder turned into irot/imir."""
    written = b"\x01\x13\x00\x03\x00\x00\x00\x01\x00" + bytes([orientation])
    assert data.count(written) == 1
    return data.replace(written, b"\x01\x12" + written[2:])


def exif_only_container(fmt: str) -> Callable[[np.ndarray], bytes]:
    def write(stored: np.ndarray) -> bytes:
        data = pil_file([Image.fromarray(stored)], fmt, quality=95, exif=exif_block(None, spare=6))
        return patched_exif_orientation(data, 6)

    return write


IGNORED: dict[str, tuple[Callable[[np.ndarray], bytes], bool]] = {
    # name: (writer of a file whose stored face is sideways, lossless)
    "jpeg-xmp": (
        lambda s: pil_file([Image.fromarray(s)], "JPEG", quality=95, xmp=xmp_packet(6)),
        False,
    ),
    "png-xmp": (xmp_png, True),
    "webp-xmp": (
        lambda s: pil_file([Image.fromarray(s)], "WEBP", lossless=True, xmp=xmp_packet(6)),
        True,
    ),
    "avif-xmp": (
        lambda s: pil_file([Image.fromarray(s)], "AVIF", quality=95, xmp=xmp_packet(6)),
        False,
    ),
    "tiff8-xmp": (
        lambda s: pil_file([Image.fromarray(s)], "TIFF", tiffinfo={700: xmp_packet(6)}),
        True,
    ),
    "tiff16-xmp": (lambda s: tiff_file([s.astype(np.uint16) * 257], xmp=xmp_packet(6)), True),
    "png-imagemagick-profile": (imagemagick_png, True),
    "avif-exif-without-irot": (exif_only_container("AVIF"), False),
    "heif-exif-without-irot": (exif_only_container("HEIF"), False),
    # Orientation 1 says "as stored", whatever the face looks like.
    "jpeg-exif-1": (
        lambda s: pil_file([Image.fromarray(s)], "JPEG", quality=95, exif=exif_block(1)),
        False,
    ),
    "png-exif-1": (lambda s: png_file([s], depth=8, colour_type=2, exif=raw_exif(1)), True),
    "tiff-exif-1": (lambda s: tiff_file([s], orientation=1), True),
    "webp-exif-1": (
        lambda s: pil_file([Image.fromarray(s)], "WEBP", lossless=True, exif=exif_block(1)),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(IGNORED))
def test_ignored_orientation_keeps_the_stored_pixels(name: str, anonymizer: Anonymizer) -> None:
    write, lossless = IGNORED[name]
    stored = np.ascontiguousarray(SIDEWAYS(HEAD))
    content = write(stored)
    frame = decode_image(content, source=name).frames[0]
    expected = stored.astype(np.uint16) * 257 if frame.dtype == np.uint16 else stored
    assert frame.shape == expected.shape  # not turned
    if lossless:
        np.testing.assert_array_equal(frame, expected)
    else:
        assert display_difference(frame, expected) < LOSSY
    # The face is found and masked where it is stored, and the output keeps that orientation.
    assert_masked_in_view(content, anonymizer, [expected], SIDEWAYS, 0.0 if lossless else LOSSY)


def test_avif_irot_with_the_same_exif_tag_turns_once(anonymizer: Anonymizer) -> None:
    """irot/imir and an EXIF Orientation saying the same: turned by irot/imir only."""
    stored = np.ascontiguousarray(TO_STORED[6](HEAD))
    exif = exif_block(6, spare=6)
    content = patched_exif_orientation(
        pil_file([Image.fromarray(stored)], "AVIF", quality=95, exif=exif), 6
    )
    with Image.open(io.BytesIO(content)) as written:
        assert written.getexif().get(TAG_ORIENTATION) == 6  # the file has irot/imir for 6
    frame = decode_image(content).frames[0]
    assert frame.shape == HEAD.shape
    assert display_difference(frame, HEAD) < LOSSY
    assert_masked_in_view(content, anonymizer, [HEAD], lambda a: a, LOSSY)


def test_heif_keeps_its_exif_tag_yet_turns_once() -> None:
    """pillow-heif writes irot/imir and keeps the EXIF tag: libheif's turn is the only one."""
    stored = np.ascontiguousarray(TO_STORED[8](HEAD))
    content = pillow_writer("HEIF", quality=95)([stored], 8)
    assert b"irot" in content
    assert exif_block(8).removeprefix(b"Exif\x00\x00") in content
    frame = decode_image(content).frames[0]
    assert frame.shape == HEAD.shape
    assert display_difference(frame, HEAD) < LOSSY


def test_each_tiff_page_has_its_own_orientation() -> None:
    upright = upright_frames("rgb16", 2) + upright_frames("rgb8", 2)
    for deep in (True, False):
        frames = upright[:2] if deep else upright[2:]
        pages = [
            np.ascontiguousarray(TO_STORED[k](frame))
            for k, frame in zip((6, 3), frames, strict=True)
        ]
        image = decode_image(tiff_file(pages, orientation=[6, 3]))
        for got, want in zip(image.frames, frames, strict=True):
            np.testing.assert_array_equal(got, want)
