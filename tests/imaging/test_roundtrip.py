"""Invariant 4: pixels round-trip faithfully, or the image is refused with a reason.

Every combination of format, bit depth, channel layout and frame count in ``CASES`` is written
by a writer that is not the codec's own (hand-built PNG/APNG, TIFF and BMP files; Pillow,
pillow-heif and libavif elsewhere), from a real photo crop plus noise. Each file must either

* decode to the pixels it holds as displayed (exactly for lossless files, within the format's
  loss otherwise), agree with what Pillow itself displays for 8-bit files, and come back the
  same after ``encode_image`` and a second decode; or
* be refused, at the stage and with the reason ``REFUSED`` names for it.

A case that is refused without being listed fails, and so does a listed one that decodes.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageSequence

from anon_tasks.core.errors import ImageDecodeError, ImageError, UnsupportedImageError
from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage, with_frames
from anon_tasks.imaging.encode import encode_image

DEFAULT = OutputSettings()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DURATIONS = (80, 120, 200)
#: Mean absolute difference (0..255 scale, visible pixels) a lossy format may add per encode.
LOSSY_TOLERANCE = {"JPEG": 6.0, "MPO": 6.0, "WEBP": 6.0, "AVIF": 6.0, "HEIF": 7.0}


# --- writers that are not the codec's -------------------------------------------------------


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def png_rows(samples: np.ndarray, depth: int) -> bytes:
    """Rows of samples (HxW or HxWxC) at ``depth`` bits, each with filter byte 0."""
    height = samples.shape[0]
    flat = samples.reshape(height, -1)
    if depth == 16:
        data = flat.astype(">u2").view(np.uint8)
    elif depth == 8:
        data = flat.astype(np.uint8)
    else:  # 1, 2 or 4 bits per sample, most significant first, each row padded to a byte
        shifts = np.arange(depth - 1, -1, -1)
        bits = ((flat[..., np.newaxis].astype(np.uint8) >> shifts) & 1).reshape(height, -1)
        data = np.packbits(bits.astype(np.uint8), axis=1)
    return np.hstack([np.zeros((height, 1), np.uint8), data]).tobytes()


def png_file(
    frames: Sequence[np.ndarray],
    *,
    depth: int,
    colour_type: int,
    palette: np.ndarray | None = None,
    trns: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    durations_ms: Sequence[int] = DURATIONS,
    blend_op: int = 0,
) -> bytes:
    """A PNG, or an APNG of full-canvas frames when there are several, built chunk by chunk.

    Args:
        frames: Samples per frame (palette indices for colour type 3), HxW or HxWxC.
        depth: Bits per sample: 1, 2, 4, 8 or 16.
        colour_type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
        palette: Nx3 uint8 palette for colour type 3.
        trns: A raw tRNS payload (a colour key, or palette alphas).
        exif: A raw eXIf payload (a TIFF header and IFD).
        xmp: An XMP packet, written as the iTXt chunk Pillow and Adobe use.
        durations_ms: Frame display times of an APNG.
        blend_op: APNG blend op of frames after the first (0 source, 1 over).
    """
    height, width = frames[0].shape[:2]
    chunks = [
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
    ]
    if exif is not None:
        chunks.append(png_chunk(b"eXIf", exif))
    if xmp is not None:
        chunks.append(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    if palette is not None:
        chunks.append(png_chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    if trns is not None:
        chunks.append(png_chunk(b"tRNS", trns))
    animated = len(frames) > 1
    if animated:
        chunks.append(png_chunk(b"acTL", struct.pack(">II", len(frames), 0)))
    sequence = 0
    for index, frame in enumerate(frames):
        data = zlib.compress(png_rows(frame, depth))
        if animated:
            blend = blend_op if index else 0
            control = (sequence, width, height, 0, 0, durations_ms[index], 1000, 0, blend)
            chunks.append(png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", *control)))
            sequence += 1
        if index == 0:
            chunks.append(png_chunk(b"IDAT", data))
        else:
            chunks.append(png_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    chunks.append(png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


#: TIFF field types: SHORT, LONG, UNDEFINED.
SHORT, LONG, UNDEFINED = 3, 4, 7


def tiff_file(
    pages: Sequence[np.ndarray],
    *,
    orientation: int | Sequence[int] | None = None,
    photometric: int | None = None,
    extra_samples: int | None = None,
    xmp: bytes | None = None,
    endian: str = "<",
) -> bytes:
    """An uncompressed TIFF, one chunky strip and one directory per page, built by hand.

    Args:
        pages: uint8 or uint16 samples per page (HxW or HxWxC).
        orientation: The Orientation tag of every page, or of each page; None writes none.
        photometric: Photometric interpretation; default gray for 1-2 samples, else RGB.
        extra_samples: ExtraSamples value for a 2nd or 4th sample (1 associated alpha,
            2 unassociated alpha, 0 unspecified); default 2.
        xmp: An XMP packet for tag 700.
        endian: ``"<"`` (II) or ``">"`` (MM).
    """
    out = bytearray((b"II*\x00" if endian == "<" else b"MM\x00*") + bytes(4))
    next_at = 4
    tags = [orientation] * len(pages) if not isinstance(orientation, Sequence) else orientation
    for page, page_orientation in zip(pages, tags, strict=True):
        samples = 1 if page.ndim == 2 else page.shape[2]
        bits = page.dtype.itemsize * 8
        strip = np.ascontiguousarray(page, dtype=page.dtype.newbyteorder(endian)).tobytes()
        strip_at = len(out)
        out += strip + bytes(len(strip) & 1)
        entries: list[tuple[int, int, Sequence[int] | bytes]] = [
            (256, LONG, [page.shape[1]]),
            (257, LONG, [page.shape[0]]),
            (258, SHORT, [bits] * samples),
            (259, SHORT, [1]),
            (262, SHORT, [photometric if photometric is not None else (1 if samples <= 2 else 2)]),
            (273, LONG, [strip_at]),
            (277, SHORT, [samples]),
            (278, LONG, [page.shape[0]]),
            (279, LONG, [len(strip)]),
            (284, SHORT, [1]),
        ]
        if page_orientation is not None:
            entries.append((274, SHORT, [page_orientation]))
        if samples in (2, 4) and photometric != 5:
            entries.append((338, SHORT, [2 if extra_samples is None else extra_samples]))
        if xmp is not None:
            entries.append((700, UNDEFINED, xmp))
        entries.sort(key=lambda entry: entry[0])
        ifd_at = len(out)
        struct.pack_into(endian + "I", out, next_at, ifd_at)
        data_at = ifd_at + 2 + 12 * len(entries) + 4
        ifd = bytearray(struct.pack(endian + "H", len(entries)))
        data = bytearray()
        for tag, kind, values in entries:
            payload = (
                bytes(values)
                if isinstance(values, bytes)
                else struct.pack(f"{endian}{len(values)}{'H' if kind == SHORT else 'I'}", *values)
            )
            count = len(payload) // {SHORT: 2, LONG: 4, UNDEFINED: 1}[kind]
            ifd += struct.pack(endian + "HHI", tag, kind, count)
            if len(payload) <= 4:
                ifd += payload.ljust(4, b"\x00")
            else:
                ifd += struct.pack(endian + "I", data_at + len(data))
                data += payload + bytes(len(payload) & 1)
        next_at = ifd_at + len(ifd)
        out += ifd + bytes(4) + data
    return bytes(out)


def bmp_rgba_file(frame: np.ndarray) -> bytes:
    """A 32-bit BMP with an alpha bit field (BITMAPV5HEADER), rows bottom-up."""
    height, width = frame.shape[:2]
    pixels = np.ascontiguousarray(frame[::-1, :, [2, 1, 0, 3]]).tobytes()
    offset = 14 + 124
    header = struct.pack("<IiiHHIIiiII", 124, width, height, 1, 32, 3, len(pixels), 0, 0, 0, 0)
    header += struct.pack("<4I", 0xFF0000, 0xFF00, 0xFF, 0xFF000000) + b"BGRs" + bytes(48 + 16)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def pil_file(frames: Sequence[Image.Image], fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    if len(frames) > 1:
        options |= {"save_all": True, "append_images": list(frames[1:])}
    frames[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- content: a real photo crop plus noise --------------------------------------------------


@dataclass(frozen=True)
class Content:
    """Where the photo crop comes from and how much noise is added."""

    top: int
    left: int
    height: int
    width: int
    seed: int


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


ASTRONAUT = astronaut()


def photo(content: Content, frame: int, *, noise: int, gray: bool = False) -> np.ndarray:
    """An 8-bit RGB (or gray) crop of the astronaut, shifted per frame, with uniform noise."""
    top, left = content.top + 9 * frame, content.left + 13 * frame
    crop = ASTRONAUT[top : top + content.height, left : left + content.width].astype(np.int32)
    if gray:
        crop = (crop @ np.array([299, 587, 114]) // 1000)[..., np.newaxis]
    rng = np.random.default_rng([content.seed, frame])
    crop = crop + rng.integers(-noise, noise + 1, crop.shape)
    pixels = np.clip(crop, 0, 255).astype(np.uint8)
    return pixels[..., 0] if gray else pixels


def deepen(pixels: np.ndarray, content: Content, frame: int) -> np.ndarray:
    """8-bit pixels as 16-bit, with detail in the low byte that an 8-bit path would lose."""
    low = np.random.default_rng([content.seed, frame, 16]).integers(0, 256, pixels.shape)
    return (pixels.astype(np.uint32) * 256 + low).astype(np.uint16)


def alpha_for(content: Content, frame: int, *, binary: bool = False) -> np.ndarray:
    """An alpha channel with fully transparent, fully opaque and (unless binary) partial areas."""
    height, width = content.height, content.width
    ramp = np.linspace(0, 255, width, dtype=np.float64)[np.newaxis, :].repeat(height, 0)
    alpha = np.roll(ramp, 5 * frame, axis=1).round().astype(np.uint8)
    alpha[: height // 4] = 0
    alpha[-(height // 4) :] = 255
    return np.where(alpha >= 128, 255, 0).astype(np.uint8) if binary else alpha


def quantised(rgb: np.ndarray, colours: int) -> tuple[np.ndarray, np.ndarray]:
    """Palette indices and a ``colours``x3 palette (median cut; unused entries black)."""
    paletted = Image.fromarray(rgb).quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    found = np.asarray(paletted.getpalette() or [], np.uint8).reshape(-1, 3)[:colours]
    palette = np.zeros((colours, 3), np.uint8)
    palette[: len(found)] = found
    return np.asarray(paletted), palette


# --- the matrix -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A source file and the frames it displays, in the layout decode_image must give."""

    data: bytes
    expected: tuple[np.ndarray, ...]
    durations_ms: tuple[int, ...] = ()


@dataclass(frozen=True)
class Case:
    """One format x depth x layout x frames combination and how to write it."""

    id: str
    format: str
    build: Callable[[Content, int], Built]
    frames: int = 1
    lossless: bool = True
    options: dict[str, object] = field(default_factory=dict)

    @property
    def tolerance(self) -> float:
        """Mean absolute difference allowed per lossy encode (0 for lossless cases)."""
        return 0.0 if self.lossless else LOSSY_TOLERANCE.get(self.format, LOSSY_TOLERANCE["JPEG"])


def _durations(frames: int) -> tuple[int, ...]:
    return DURATIONS[:frames] if frames > 1 else ()


def png_gray(depth: int) -> Callable[[Content, int], Built]:
    def build(content: Content, frames: int) -> Built:
        levels = (1 << depth) - 1
        samples, expected = [], []
        for index in range(frames):
            gray = photo(content, index, noise=20, gray=True)
            if depth == 16:
                stored = deepen(gray, content, index)
                samples.append(stored)
                expected.append(stored)
            else:
                stored = (gray.astype(np.uint32) * levels + 127) // 255
                samples.append(stored)
                expected.append((stored * 255 // levels).astype(np.uint8))
        data = png_file(samples, depth=depth, colour_type=0)
        return Built(data, tuple(expected), _durations(frames))

    return build


def png_layout(channels: int, depth: int) -> Callable[[Content, int], Built]:
    colour_type = {2: 4, 3: 2, 4: 6}[channels]

    def build(content: Content, frames: int) -> Built:
        expected = []
        for index in range(frames):
            pixels = photo(content, index, noise=20, gray=channels == 2)
            pixels = pixels[..., np.newaxis] if channels == 2 else pixels
            if channels in (2, 4):
                pixels = np.concatenate([pixels, alpha_for(content, index)[..., None]], axis=2)
            expected.append(deepen(pixels, content, index) if depth == 16 else pixels)
        data = png_file(expected, depth=depth, colour_type=colour_type)
        return Built(data, tuple(expected), _durations(frames))

    return build


def png_keyed(channels: int, depth: int, blend_op: int = 0) -> Callable[[Content, int], Built]:
    """Gray or RGB with a tRNS colour key (frame 0's top-left colour): its pixels are hidden.

    With ``blend_op`` 1 (over), an APNG frame's hidden pixels show the canvas before it.
    """

    def build(content: Content, frames: int) -> Built:
        samples = []
        for index in range(frames):
            pixels = photo(content, index, noise=20, gray=channels == 1)
            pixels = deepen(pixels, content, index) if depth == 16 else pixels
            samples.append(pixels.reshape(*pixels.shape[:2], channels).copy())
        key = samples[0][0, 0].copy()
        expected = []
        for pixels in samples:
            pixels[: content.height // 3, : content.width // 3] = key
            hidden = np.all(pixels == key, axis=2)
            alpha = np.where(hidden, 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)
            expected.append(np.concatenate([pixels, alpha[..., np.newaxis]], axis=2))
        trns = struct.pack(f">{channels}H", *key.tolist())
        stored = [pixels[..., 0] if channels == 1 else pixels for pixels in samples]
        colour_type = 0 if channels == 1 else 2
        data = png_file(stored, depth=depth, colour_type=colour_type, trns=trns, blend_op=blend_op)
        return Built(data, tuple(expected), _durations(frames))

    return build


def png_palette(depth: int, alphas: str) -> Callable[[Content, int], Built]:
    """Palette PNG; ``alphas``: "none", "key" (one transparent index) or "ramp" (many)."""

    def build(content: Content, frames: int) -> Built:
        colours = 1 << min(depth, 8)
        indices, expected = [], []
        palette = None
        for index in range(frames):
            rgb = photo(content, index, noise=20)
            if palette is None:
                found, palette = quantised(rgb, colours)
            else:
                # Later frames reuse the first palette (APNG frames share one PLTE).
                found = np.asarray(
                    Image.fromarray(rgb).quantize(palette=palette_image(palette), dither=0)
                )
            indices.append(found)
        assert palette is not None
        count = len(palette)
        alpha = np.full(count, 255, np.uint8)
        if alphas == "key":
            alpha[0] = 0
        elif alphas == "ramp":
            alpha[: count // 2] = np.linspace(0, 254, count // 2).astype(np.uint8)
        for found in indices:
            rgba = np.concatenate([palette, alpha[:, np.newaxis]], axis=1)[found]
            expected.append(rgba if alphas != "none" else rgba[..., :3])
        trns = None if alphas == "none" else alpha.tobytes()
        data = png_file(indices, depth=depth, colour_type=3, palette=palette, trns=trns)
        return Built(data, tuple(expected), _durations(frames))

    return build


def palette_image(palette: np.ndarray) -> Image.Image:
    image = Image.new("P", (1, 1))
    flat = palette.astype(np.uint8).reshape(-1).tobytes()
    image.putpalette(flat + bytes(768 - len(flat)))
    return image


def pillow_case(
    fmt: str, layout: str, *, noise: int = 20, **options: object
) -> Callable[[Content, int], Built]:
    """A file written by Pillow (or its plugins) from frames in ``layout``."""

    def build(content: Content, frames: int) -> Built:
        images, expected = [], []
        for index in range(frames):
            gray = layout in ("L", "LA", "1", "I;16")
            rgb = photo(content, index, noise=noise, gray=gray)
            if layout == "1":
                bits = np.where(rgb >= 128, 255, 0).astype(np.uint8)
                images.append(Image.fromarray(bits).convert("1"))
                expected.append(bits)
            elif layout in ("LA", "RGBA"):
                alpha = alpha_for(content, index)
                pixels = np.dstack([rgb, alpha])
                images.append(Image.fromarray(pixels))
                expected.append(pixels)
            elif layout == "CMYK":
                cmyk = Image.fromarray(rgb).convert("CMYK")
                images.append(cmyk)
                expected.append(np.asarray(cmyk.convert("RGB")))
            elif layout == "I;16":
                deep = deepen(rgb, content, index)
                images.append(Image.fromarray(deep))
                expected.append(deep)
            else:
                images.append(Image.fromarray(rgb))
                expected.append(rgb)
        data = pil_file(images, fmt, **_animation_options(fmt, frames), **options)
        return Built(data, tuple(expected), _durations(frames) if fmt in ANIMATED else ())

    return build


ANIMATED = frozenset({"GIF", "WEBP", "PNG", "AVIF"})


def _animation_options(fmt: str, frames: int) -> dict[str, object]:
    if frames > 1 and fmt in ANIMATED:
        return {"duration": list(DURATIONS[:frames]), "loop": 0}
    return {}


def gif_case(layout: str) -> Callable[[Content, int], Built]:
    """GIF from palette frames: "P", "PT" (index 0 transparent) or "L" (gray)."""

    def build(content: Content, frames: int) -> Built:
        images, expected = [], []
        for index in range(frames):
            if layout == "L":
                shown = photo(content, index, noise=20, gray=True)
                images.append(Image.fromarray(shown))
            else:
                found, palette = quantised(photo(content, index, noise=20), 200)
                indices, shown = found.astype(np.uint8), palette[found]
                if layout == "PT":
                    hidden = alpha_for(content, index, binary=True) == 0
                    indices = indices + 1
                    indices[hidden] = 0
                    palette = np.vstack([np.zeros((1, 3), np.uint8), palette])
                    shown = np.dstack([shown, np.where(hidden, 0, 255).astype(np.uint8)])
                image = Image.fromarray(indices)
                image.putpalette(palette.reshape(-1).tobytes())
                if layout == "PT":
                    image.info["transparency"] = 0
                images.append(image)
            if frames > 1 and shown.ndim == 2:
                shown = np.repeat(shown[..., np.newaxis], 3, axis=2)  # animation canvases are RGB
            expected.append(shown)
        options = _animation_options("GIF", frames)
        if layout == "PT" and frames > 1:
            options["disposal"] = 2
        data = pil_file(images, "GIF", optimize=False, **options)
        return Built(data, tuple(expected), _durations(frames))

    return build


def tiff_case(layout: str, *, endian: str = "<") -> Callable[[Content, int], Built]:
    """A hand-built TIFF: "RGB16", "RGBA16", "LA16" or "CMYK16" pages."""

    def build(content: Content, frames: int) -> Built:
        pages = []
        for index in range(frames):
            pixels = photo(content, index, noise=20, gray=layout == "LA16")
            if layout in ("RGBA16", "LA16", "CMYK16"):
                extra = alpha_for(content, index)
                pixels = np.dstack([pixels, extra])
            pages.append(deepen(pixels, content, index))
        data = tiff_file(pages, photometric=5 if layout == "CMYK16" else None, endian=endian)
        return Built(data, tuple(pages))

    return build


def bmp_rgba(content: Content, frames: int) -> Built:
    pixels = np.dstack([photo(content, 0, noise=20), alpha_for(content, 0)])
    return Built(bmp_rgba_file(pixels), (pixels,))


def heif_gray16(content: Content, frames: int) -> Built:
    """16-bit gray written by pillow-heif as 10-bit HEVC; it decodes as 16-bit gray again."""
    deep = deepen(photo(content, 0, noise=6, gray=True), content, 0)
    data = pil_file([Image.fromarray(deep)], "HEIF", quality=95)
    return Built(data, (deep,))


CASES: list[Case] = [
    # PNG and APNG, hand-built: every bit depth and colour type.
    *[Case(f"png-gray{d}", "PNG", png_gray(d)) for d in (1, 2, 4, 8, 16)],
    Case("png-gray-alpha8", "PNG", png_layout(2, 8)),
    Case("png-gray-alpha16", "PNG", png_layout(2, 16)),
    Case("png-rgb8", "PNG", png_layout(3, 8)),
    Case("png-rgb16", "PNG", png_layout(3, 16)),
    Case("png-rgba8", "PNG", png_layout(4, 8)),
    Case("png-rgba16", "PNG", png_layout(4, 16)),
    Case("png-gray8-key", "PNG", png_keyed(1, 8)),
    Case("png-gray16-key", "PNG", png_keyed(1, 16)),
    Case("png-rgb8-key", "PNG", png_keyed(3, 8)),
    Case("png-rgb16-key", "PNG", png_keyed(3, 16)),
    *[Case(f"png-palette{d}", "PNG", png_palette(d, "none")) for d in (1, 2, 4, 8)],
    Case("png-palette8-key", "PNG", png_palette(8, "key")),
    Case("png-palette8-alphas", "PNG", png_palette(8, "ramp")),
    Case("apng-gray8", "PNG", png_gray(8), frames=3),
    Case("apng-gray16", "PNG", png_gray(16), frames=3),  # the almost-white bug
    Case("apng-gray-alpha8", "PNG", png_layout(2, 8), frames=3),
    Case("apng-gray-alpha16", "PNG", png_layout(2, 16), frames=3),
    Case("apng-rgb8", "PNG", png_layout(3, 8), frames=3),
    Case("apng-rgb16", "PNG", png_layout(3, 16), frames=3),
    Case("apng-rgba8", "PNG", png_layout(4, 8), frames=3),
    Case("apng-rgba16", "PNG", png_layout(4, 16), frames=3),
    Case("apng-gray16-key", "PNG", png_keyed(1, 16), frames=3),
    # Pillow ignores a gray colour key when it blends a frame over the canvas.
    Case("apng-gray8-key-over", "PNG", png_keyed(1, 8, blend_op=1), frames=3),
    Case("apng-gray16-key-over", "PNG", png_keyed(1, 16, blend_op=1), frames=3),
    Case("apng-palette8", "PNG", png_palette(8, "none"), frames=3),
    Case("apng-palette8-alphas", "PNG", png_palette(8, "ramp"), frames=3),
    # GIF, written by Pillow from palette frames.
    Case("gif-palette", "GIF", gif_case("P")),
    Case("gif-palette-transparent", "GIF", gif_case("PT")),
    Case("gif-gray", "GIF", gif_case("L")),
    Case("gif-palette-anim", "GIF", gif_case("P"), frames=3),
    Case("gif-palette-transparent-anim", "GIF", gif_case("PT"), frames=3),
    # WebP, lossless and lossy, stills and animations.
    Case("webp-lossless-rgb", "WEBP", pillow_case("WEBP", "RGB", lossless=True, exact=True)),
    Case("webp-lossless-rgba", "WEBP", pillow_case("WEBP", "RGBA", lossless=True, exact=True)),
    Case("webp-lossy-rgb", "WEBP", pillow_case("WEBP", "RGB", noise=6, quality=95), lossless=False),
    Case(
        "webp-lossy-rgba", "WEBP", pillow_case("WEBP", "RGBA", noise=6, quality=95), lossless=False
    ),
    Case(
        "webp-lossless-rgb-anim",
        "WEBP",
        pillow_case("WEBP", "RGB", lossless=True, exact=True),
        frames=3,
    ),
    Case(
        "webp-lossless-rgba-anim",
        "WEBP",
        pillow_case("WEBP", "RGBA", lossless=True, exact=True),
        frames=3,
    ),
    Case("webp-lossy-rgb-anim", "WEBP", pillow_case("WEBP", "RGB", noise=6, quality=95), 3, False),
    # TIFF: Pillow's 8-bit and 16-bit gray layouts, hand-built 16-bit colour; pages.
    *[
        Case(f"tiff-{layout.lower()}", "TIFF", pillow_case("TIFF", layout))
        for layout in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "I;16")
    ],
    Case(
        "tiff-rgb8-jpeg",
        "TIFF",
        pillow_case("TIFF", "RGB", noise=6, compression="jpeg", quality=95),
        lossless=False,
    ),
    Case("tiff-rgb8-pages", "TIFF", pillow_case("TIFF", "RGB"), frames=3),
    Case("tiff-gray16-pages", "TIFF", pillow_case("TIFF", "I;16"), frames=3),
    Case("tiff-rgb16", "TIFF", tiff_case("RGB16")),
    Case("tiff-rgb16-mm", "TIFF", tiff_case("RGB16", endian=">")),
    Case("tiff-rgba16", "TIFF", tiff_case("RGBA16")),
    Case("tiff-rgb16-pages", "TIFF", tiff_case("RGB16"), frames=3),
    Case("tiff-gray-alpha16", "TIFF", tiff_case("LA16")),
    Case("tiff-cmyk16", "TIFF", tiff_case("CMYK16")),
    # JPEG and MPO.
    *[
        Case(
            f"jpeg-{layout.lower()}",
            "JPEG",
            pillow_case("JPEG", layout, noise=6, quality=95),
            1,
            False,
        )
        for layout in ("L", "RGB", "CMYK")
    ],
    Case(
        "mpo-rgb", "MPO", pillow_case("MPO", "RGB", noise=6, quality=95), frames=2, lossless=False
    ),
    # BMP.
    *[
        Case(f"bmp-{layout.lower()}", "BMP", pillow_case("BMP", layout))
        for layout in ("1", "L", "RGB")
    ],
    Case("bmp-palette", "BMP", png_palette(8, "none"), options={"as_bmp": True}),
    Case("bmp-rgba", "BMP", bmp_rgba),
    # AVIF (Pillow/libavif) and HEIF (pillow-heif).
    *[
        Case(
            f"avif-{layout.lower()}",
            "AVIF",
            pillow_case("AVIF", layout, noise=6, quality=95),
            1,
            False,
        )
        for layout in ("L", "RGB", "RGBA")
    ],
    Case(
        "avif-rgb-anim",
        "AVIF",
        pillow_case("AVIF", "RGB", noise=6, quality=95),
        frames=3,
        lossless=False,
    ),
    *[
        Case(
            f"heif-{layout.lower()}",
            "HEIF",
            pillow_case("HEIF", layout, noise=6, quality=95),
            1,
            False,
        )
        for layout in ("L", "RGB", "RGBA")
    ],
    Case(
        "heif-rgb-pages", "HEIF", pillow_case("HEIF", "RGB", noise=6, quality=95), 3, lossless=False
    ),
    Case("heif-gray16", "HEIF", heif_gray16, lossless=False),
]

#: Cases refused, with the stage ("decode" or "encode"), the error and the reason.
REFUSED: dict[str, tuple[str, type[ImageError], str]] = {
    "apng-rgb16": ("decode", UnsupportedImageError, "16-bit .*animated PNG"),
    "apng-rgba16": ("decode", UnsupportedImageError, "16-bit .*animated PNG"),
    "apng-gray-alpha16": ("decode", UnsupportedImageError, "16-bit .*animated PNG"),
    "apng-gray8-key-over": ("decode", UnsupportedImageError, "blended over a L colour key"),
    "apng-gray16-key-over": ("decode", UnsupportedImageError, "blended over a I;16 colour key"),
    # Neither Pillow nor OpenCV reads 16-bit gray+alpha TIFF.
    "tiff-gray-alpha16": ("decode", ImageDecodeError, "cannot decode|not an image"),
    "tiff-cmyk16": ("decode", UnsupportedImageError, "photometric 5"),
}


# --- comparing ------------------------------------------------------------------------------


def displayed(frame: np.ndarray) -> np.ndarray:
    """A frame as shown: float RGBA on a 0-255 scale (gray replicated, no alpha = opaque)."""
    values = frame.astype(np.float64) / (257.0 if frame.dtype == np.uint16 else 1.0)
    values = values.reshape(*frame.shape[:2], -1)
    colour = values[..., :3] if values.shape[2] >= 3 else values[..., :1].repeat(3, axis=2)
    has_alpha = values.shape[2] in (2, 4)
    alpha = values[..., -1:] if has_alpha else np.full((*values.shape[:2], 1), 255.0)
    return np.concatenate([colour, alpha], axis=2)


def display_difference(one: np.ndarray, other: np.ndarray) -> float:
    """Mean absolute difference as displayed: colour where both are visible, and alpha."""
    assert one.shape[:2] == other.shape[:2], (one.shape, other.shape)
    a, b = displayed(one), displayed(other)
    visible = (a[..., 3] > 0) & (b[..., 3] > 0)
    colour = np.abs(a[..., :3] - b[..., :3])[visible].mean() if visible.any() else 0.0
    return max(float(colour), float(np.abs(a[..., 3] - b[..., 3]).mean()))


def hidden_colour_cleared(frame: np.ndarray) -> np.ndarray:
    """The frame with the colour of fully transparent pixels set to 0 (it is never shown)."""
    if frame.ndim == 3 and frame.shape[2] in (2, 4):
        return np.where(frame[..., -1:] == 0, 0, frame)
    return frame


def pillow_displays(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(frame.convert("RGBA")).copy() for frame in ImageSequence.Iterator(image)]


def assert_same_pixels(
    got: np.ndarray, want: np.ndarray, *, lossless: bool, tolerance: float
) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if lossless:
        np.testing.assert_array_equal(hidden_colour_cleared(got), hidden_colour_cleared(want))
    else:
        assert display_difference(got, want) < tolerance


def build_case(case: Case, content: Content) -> Built:
    built = case.build(content, case.frames)
    if case.options.get("as_bmp"):
        # The palette frames written as an 8-bit palette BMP by Pillow.
        with Image.open(io.BytesIO(built.data)) as source:
            data = pil_file([source.copy()], "BMP")
        return Built(data, built.expected)
    return built


contents = st.builds(
    Content,
    top=st.integers(0, 200),
    left=st.integers(0, 200),
    height=st.integers(16, 48),
    width=st.integers(16, 48),
    seed=st.integers(0, 2**16),
)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
@settings(max_examples=4, deadline=None)
@given(content=contents)
def test_round_trip_is_faithful_or_refused(case: Case, content: Content) -> None:
    built = build_case(case, content)
    stage, error, reason = REFUSED.get(case.id, (None, ImageError, ""))
    tolerance = case.tolerance

    if stage == "decode":
        with pytest.raises(error, match=reason) as refused:
            decode_image(built.data, source=case.id)
        assert refused.value.reason
        return
    image = decode_image(built.data, source=case.id)

    # The pixels the file holds, as displayed, in the expected layout.
    assert image.format == case.format
    assert len(image.frames) == len(built.expected)
    assert image.durations_ms == built.durations_ms
    for got, want in zip(image.frames, built.expected, strict=True):
        assert_same_pixels(got, want, lossless=case.lossless, tolerance=tolerance)
    # What Pillow shows for 8-bit files (it clips 16-bit ones, the almost-white frames).
    if all(frame.dtype == np.uint8 for frame in built.expected):
        for got, shown in zip(image.frames, pillow_displays(built.data), strict=True):
            assert display_difference(got, shown) == 0.0

    # Written back without changes and read again: the same pixels, frames and timing.
    if stage == "encode":
        with pytest.raises(error, match=reason) as refused:
            encode_image(image, settings=DEFAULT, source=case.id)
        assert refused.value.reason
        return
    again = decode_image(encode_image(image, settings=DEFAULT, source=case.id))
    assert again.format == image.format
    assert len(again.frames) == len(image.frames)
    assert again.durations_ms == image.durations_ms
    for got, want in zip(again.frames, image.frames, strict=True):
        assert_same_pixels(got, want, lossless=case.lossless, tolerance=tolerance)


def test_the_16bit_gray_apng_keeps_its_full_range() -> None:
    """The reported case: 16-bit gray APNG frames came out almost white."""
    content = Content(top=60, left=180, height=40, width=32, seed=7)
    built = png_gray(16)(content, 3)
    image = decode_image(built.data)
    assert image.is_animation
    for got, want in zip(image.frames, built.expected, strict=True):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)
        assert got.max() < 0xFF00  # not saturated


def test_refusal_table_names_only_cases_that_exist() -> None:
    assert set(REFUSED) <= {case.id for case in CASES}


# --- writing another format -----------------------------------------------------------------


def still(frame: np.ndarray, fmt: str, **fields: object) -> DecodedImage:
    return DecodedImage(frames=(frame,), format=fmt, **fields)


RGB = np.ascontiguousarray(ASTRONAUT[100:140, 200:250])
GRAY = np.ascontiguousarray(RGB[..., 1])


@pytest.mark.parametrize(
    ("source", "target", "lossless"),
    [
        (still(RGB, "JPEG"), "PNG", True),
        (still(RGB, "PNG"), "JPEG", False),
        (still(RGB, "PNG"), "webp", True),  # any case; lossless because the source is
        (still(GRAY, "PNG"), "WEBP", True),  # gray becomes RGB
        (still(np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)]), "PNG"), "BMP", True),
        (still(np.dstack([GRAY, GRAY]), "PNG"), "BMP", True),  # gray+alpha becomes RGBA
        (still(GRAY, "TIFF"), "GIF", True),
        (still(RGB, "BMP"), "TIFF", True),
        (still(RGB, "PNG"), "AVIF", False),
        (still(GRAY, "PNG"), "HEIF", False),
        (still(deepen(RGB, Content(0, 0, 1, 1, 3), 0), "PNG"), "TIFF", True),
    ],
    ids=lambda value: value.format if isinstance(value, DecodedImage) else str(value),
)
def test_another_format_keeps_the_pixels(source: DecodedImage, target: str, lossless: bool) -> None:
    data = encode_image(source, settings=DEFAULT, format=target)
    back = decode_image(data)
    assert back.format == target.upper()
    if lossless:
        assert display_difference(back.frames[0], source.frames[0]) == 0.0
    else:
        assert display_difference(back.frames[0], source.frames[0]) < 4.0


def animation(fmt: str) -> DecodedImage:
    frames = [np.ascontiguousarray(ASTRONAUT[y : y + 24, 200:232]) for y in (0, 30, 60)]
    return DecodedImage(frames=tuple(frames), format=fmt, durations_ms=(100, 150, 200), loop=0)


def gray_alpha_animation(fmt: str) -> DecodedImage:
    """Gray frames with on/off alpha, each frame hiding different pixels."""
    frames = []
    for index, y in enumerate((0, 30, 60)):
        gray = np.ascontiguousarray(ASTRONAUT[y : y + 24, 200:232, 1])
        alpha = np.where((np.arange(32) // 4 + index) % 2 == 0, 255, 0).astype(np.uint8)
        frames.append(np.dstack([gray, np.broadcast_to(alpha, gray.shape)]))
    return DecodedImage(frames=tuple(frames), format=fmt, durations_ms=(100, 150, 200), loop=0)


def pages(fmt: str) -> DecodedImage:
    frames = [np.ascontiguousarray(ASTRONAUT[y : y + 24, 200:232]) for y in (0, 30, 60)]
    return DecodedImage(frames=tuple(frames), format=fmt)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (animation("GIF"), "PNG"),
        (animation("PNG"), "WEBP"),
        (gray_alpha_animation("PNG"), "GIF"),
        (gray_alpha_animation("PNG"), "WEBP"),
        (pages("TIFF"), "HEIF"),
    ],
)
def test_another_format_keeps_every_frame(source: DecodedImage, target: str) -> None:
    back = decode_image(encode_image(source, settings=DEFAULT, format=target))
    assert len(back.frames) == 3
    assert back.durations_ms == source.durations_ms
    for got, want in zip(back.frames, source.frames, strict=True):
        assert display_difference(got, want) < 6.0


@pytest.mark.parametrize(
    ("source", "target", "reason"),
    [
        (animation("GIF"), "JPEG", "JPEG holds one frame, not 3"),
        (pages("TIFF"), "BMP", "BMP holds one frame"),
        (animation("WEBP"), "TIFF", "TIFF cannot hold an animation"),
        (pages("TIFF"), "GIF", "GIF cannot hold 3 separate pages"),
        (
            still(deepen(RGB, Content(0, 0, 1, 1, 3), 0), "PNG"),
            "JPEG",
            "JPEG cannot hold 3-channel uint16",
        ),
        (
            still(deepen(GRAY, Content(0, 0, 1, 1, 3), 0), "PNG"),
            "GIF",
            "GIF cannot hold 1-channel uint16",
        ),
        (still(np.dstack([RGB, RGB[..., :1]]), "PNG"), "JPEG", "JPEG cannot hold 4-channel uint8"),
        (
            still(np.dstack([RGB, RGB[..., :1]]), "PNG"),
            "GIF",
            "GIF cannot hold partial transparency",
        ),
        (still(np.dstack([GRAY, GRAY]), "PNG"), "JPEG", "JPEG cannot hold 2-channel uint8"),
        (still(RGB, "PNG"), "PCX", "cannot write PCX images"),
    ],
    ids=lambda value: value.format if isinstance(value, DecodedImage) else str(value),
)
def test_another_format_that_cannot_hold_the_frames_is_refused(
    source: DecodedImage, target: str, reason: str
) -> None:
    with pytest.raises(UnsupportedImageError, match=re.escape(reason)) as refused:
        encode_image(source, settings=DEFAULT, source="out.x", format=target)
    assert refused.value.source == "out.x"


def test_same_format_by_name_changes_nothing() -> None:
    image = still(RGB, "PNG")
    assert encode_image(image, settings=DEFAULT, format="png") == encode_image(
        image, settings=DEFAULT
    )


def test_a_masked_gif_keeps_binary_transparency() -> None:
    """GIF's own loss: alpha made partial by masking becomes on/off at 128, not a refusal."""
    frame = np.dstack([RGB, np.where(GRAY > 100, 255, 0).astype(np.uint8)])
    blurred = frame.copy()
    blurred[..., 3] = np.clip(blurred[..., 3].astype(int) - 3, 0, 255)  # partial alpha
    image = with_frames(still(frame, "GIF"), [blurred])
    back = decode_image(encode_image(image, settings=DEFAULT)).frames[0]
    np.testing.assert_array_equal(back[..., 3], np.where(blurred[..., 3] >= 128, 255, 0))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "AVIF"])
def test_a_one_frame_animation_is_written(fmt: str) -> None:
    image = DecodedImage(frames=(RGB,), format=fmt, durations_ms=(100,), loop=0)
    back = decode_image(encode_image(image, settings=DEFAULT))
    assert len(back.frames) == 1
    assert display_difference(back.frames[0], RGB) < LOSSY_TOLERANCE["AVIF"]


def test_a_gray_alpha_animation_as_gif_keeps_every_frames_alpha() -> None:
    """Frames whose free gray levels differ still share one transparent index."""
    rng = np.random.default_rng(0)
    grays = [rng.integers(0, 256, (10, 12), dtype=np.uint8) for _ in range(3)]
    frames = tuple(
        np.dstack([gray, np.where(gray > 128, 255, 0).astype(np.uint8)]) for gray in grays
    )
    image = DecodedImage(frames=frames, format="PNG", durations_ms=(100, 100, 100), loop=0)
    back = decode_image(encode_image(image, settings=DEFAULT, format="GIF"))
    for got, want in zip(back.frames, frames, strict=True):
        np.testing.assert_array_equal(got[..., 3], want[..., 1])
        visible = want[..., 1] > 0
        np.testing.assert_array_equal(got[..., 0][visible], want[..., 0][visible])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(2, 4),
    colours=st.integers(1, 255),
    hidden_share=st.lists(st.sampled_from([0.0, 0.3, 1.0]), min_size=4, max_size=4),  # per frame
)
def test_a_gif_animation_with_alpha_keeps_every_pixel(
    seed: int, count: int, colours: int, hidden_share: list[float]
) -> None:
    """Canvases of at most 255 colours with on/off alpha (frames with none hidden, some, all)
    come back exactly: Pillow's delta frames must not crop away a visible pixel."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
        palette[: colours // 4] = 0  # black, the colour of unused palette entries
        rgb = palette[rng.integers(0, colours, (9, 13))]
        alpha = np.where(rng.random((9, 13)) < hidden_share[index], 0, 255).astype(np.uint8)
        alpha[0] = 0
        alpha[0, index] = 255  # no two frames alike (encoders merge identical frames)
        frames.append(np.dstack([rgb, alpha]))
    image = DecodedImage(frames=tuple(frames), format="GIF", durations_ms=(100,) * count, loop=0)
    back = decode_image(encode_image(image, settings=DEFAULT))
    assert len(back.frames) == count
    for got, want in zip(back.frames, frames, strict=True):
        np.testing.assert_array_equal(hidden_colour_cleared(got), hidden_colour_cleared(want))
