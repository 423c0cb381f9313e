"""Decode image files into a ``DecodedImage``: the upright pixels of every frame.

``decode_image`` turns file bytes into the pixels of every frame, turned upright the way
browsers turn them (``orientation``), in one of the four layouts of ``decoded``, with dtype
``uint8`` or ``uint16`` (16-bit PNG and TIFF, and HEIF gray above 8 bits, stay 16-bit).

Decisions worth knowing:

* Pixel counts are checked from the headers before any pixels are decoded; Pillow's own
  decompression-bomb limit is lifted only inside this package's calls into Pillow (under a
  lock, see ``pillow_guard``), so the caller's ``max_pixels`` is the one limit that applies.
* Every frame of a multi-frame file is decoded (GIF/WebP/APNG/AVIF animations as composited
  canvases, MPO/TIFF/HEIF pages one by one): a frame that is skipped would leave faces unmasked.
* Every decoder is given the file without the orientation it would apply itself
  (``stored``), so orientation is applied exactly once.
* Decoded frames are read-only views: masking must build new arrays, never write in place.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from typing import Final

import numpy as np
from PIL import Image, ImageSequence, PngImagePlugin, UnidentifiedImageError

from anon_tasks.core.errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from anon_tasks.imaging.decoded import (
    ANIMATION_FORMATS,
    SUPPORTED_FORMATS,
    DecodedImage,
    UnsupportedLayoutError,
    add_key_alpha,
)
from anon_tasks.imaging.high_bit import (
    high_bit_png_frames,
    high_bit_tiff_frames,
    is_high_bit_png,
    is_high_bit_tiff,
)
from anon_tasks.imaging.metadata import matching_icc, source_exif
from anon_tasks.imaging.orientation import display_orientation, upright
from anon_tasks.imaging.pillow_guard import describe, log_warnings, pillow_guard
from anon_tasks.imaging.stored import StoredFile, stored_file

__all__ = ["decode_image"]

_UNIDENTIFIED: Final = "not an image, or not one of " + ", ".join(SUPPORTED_FORMATS)
_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(fmt for fmt in SUPPORTED_FORMATS if fmt != "MPO")

#: Pillow modes decoded through Pillow, and the mode their pixels are converted to.
_PILLOW_TARGET_MODE: Final[dict[str, str]] = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
_UINT16_MODES: Final[frozenset[str]] = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: Modes whose ``transparency`` info is a colour key that becomes an alpha channel.
_KEYED_MODES: Final[frozenset[str]] = frozenset({"L", "RGB"} | _UINT16_MODES)
#: Modes whose colour key Pillow ignores when it blends an APNG frame over the canvas.
_UNBLENDED_KEY_MODES: Final[frozenset[str]] = frozenset({"1", "L"} | _UINT16_MODES)


def decode_image(
    data: bytes, *, source: str = "<bytes>", max_pixels: int = 200_000_000
) -> DecodedImage:
    """Decode every frame of an image file into upright pixels.

    Args:
        data: The whole file.
        source: The file's name or URL, for error messages and logs.
        max_pixels: Refuse files with more pixels than this, all frames together, before
            decoding any of them.

    Returns:
        The upright frames with the metadata needed to write them back.

    Raises:
        ImageTooLargeError: The headers declare more than ``max_pixels`` pixels.
        UnsupportedImageError: A layout this package cannot carry faithfully (float pixels,
            16-bit colour animations, 16-bit colour mixed with other TIFF pages...).
        ImageDecodeError: Not an image of a supported format, truncated or corrupt.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with pillow_guard() as caught:
            return _decode(bytes(data), source, max_pixels)
    except ImageError:
        raise
    except UnsupportedLayoutError as exc:
        raise UnsupportedImageError(str(exc), source=source) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(_UNIDENTIFIED, source=source) from exc
    except Exception as exc:  # Pillow, libavif, libheif, OpenCV and zlib raise many types
        raise ImageDecodeError(f"cannot decode image: {describe(exc)}", source=source) from exc
    finally:
        log_warnings(caught, source)


def _decode(data: bytes, source: str, max_pixels: int) -> DecodedImage:
    stored = stored_file(data)
    with Image.open(io.BytesIO(stored.data), formats=_OPEN_FORMATS) as im:
        fmt = str(im.format)
        n_frames = _check_pixel_budget(im, max_pixels, source)
        if fmt == "TIFF" and len(stored.tiff_pages) != n_frames:
            raise ImageDecodeError(
                f"{len(stored.tiff_pages)} TIFF directories read for {n_frames} pages",
                source=source,
            )
        # Container metadata is read before seeking: later frames may carry their own.
        icc = im.info.get("icc_profile")
        exif = stored.png_exif if fmt == "PNG" else source_exif(im)
        loop = im.info.get("loop")
        progressive = bool(im.info.get("progressive"))
        subsampling = _jpeg_subsampling(im) if fmt in ("JPEG", "MPO") else None
        durations: tuple[int, ...] = ()
        if fmt == "TIFF" and is_high_bit_tiff(stored.tiff_pages):
            frames = high_bit_tiff_frames(im, stored, max_pixels, source)
        elif fmt == "PNG" and is_high_bit_png(stored.data):
            frames = high_bit_png_frames(im, stored, n_frames, source)
        elif n_frames > 1 and fmt in ANIMATION_FORMATS:
            frames, durations = _animation_frames(im, stored, source)
        else:
            frames = _page_frames(im, stored, max_pixels, source)
    return DecodedImage(
        frames=frames,
        format=fmt,
        icc_profile=matching_icc(icc, frames[0]),
        exif=exif,
        durations_ms=durations,
        loop=loop if durations and isinstance(loop, int) else None,
        lossless=fmt == "WEBP" and _webp_is_lossless(stored.data),
        progressive=fmt == "JPEG" and progressive,
        jpeg_subsampling=subsampling,
    )


def _jpeg_subsampling(im: Image.Image) -> int | None:
    """Pillow's number for a JPEG's chroma subsampling (0, 1 or 2), or None (gray, CMYK, odd)."""
    from PIL import JpegImagePlugin

    sampling = JpegImagePlugin.get_sampling(im)
    return sampling if sampling in (0, 1, 2) else None


def _check_pixel_budget(im: Image.Image, max_pixels: int, source: str) -> int:
    """Refuse empty or oversized images from their headers; return the frame count."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})", source=source)
    # One frame first: counting frames of a bomb would already walk its file.
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} pixels exceed the limit of {max_pixels}", source=source
        )
    n_frames = int(getattr(im, "n_frames", 1))
    if width * height * n_frames > max_pixels:
        raise ImageTooLargeError(
            f"{n_frames} frames of {width}x{height} pixels exceed the limit of {max_pixels}",
            source=source,
        )
    return n_frames


# --- pixels of each frame -------------------------------------------------------------------


def _page_frames(
    im: Image.Image, stored: StoredFile, max_pixels: int, source: str
) -> tuple[np.ndarray, ...]:
    """Decode each page (a still has one) on its own, each with its own orientation."""
    frames: list[np.ndarray] = []
    spent = 0
    for index, page in enumerate(ImageSequence.Iterator(im)):
        # Pages may be larger than the first one the headers check looked at.
        spent += page.width * page.height
        if spent > max_pixels:
            raise ImageTooLargeError(
                f"pages hold more than the limit of {max_pixels} pixels", source=source
            )
        pixels = _still_pixels(page)
        frames.append(upright(pixels, display_orientation(page, stored, index, source)))
    return tuple(frames)


def _animation_frames(
    im: Image.Image, stored: StoredFile, source: str
) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Decode each composited canvas of an animation.

    APNG frames share one mode, so they keep the still layout of that mode (gray, 16-bit gray,
    a colour key as alpha...). GIF, WebP and AVIF canvases become RGBA, or RGB when every
    canvas is opaque.
    """
    keep_mode = im.format == "PNG"
    canvases: list[np.ndarray] = []
    durations: list[int] = []
    orientation = 1
    for index, frame in enumerate(ImageSequence.Iterator(im)):
        if index > 0 and _blends_over_an_ignored_key(frame):
            raise UnsupportedLayoutError(
                f"APNG frames blended over a {frame.mode} colour key cannot be composited"
            )
        canvases.append(_still_pixels(frame) if keep_mode else np.asarray(frame.convert("RGBA")))
        if index == 0:
            orientation = display_orientation(frame, stored, 0, source)
        durations.append(round(float(frame.info.get("duration") or 0)))
    if not keep_mode and all(bool(canvas[..., 3].min() == 255) for canvas in canvases):
        canvases = [canvas[..., :3] for canvas in canvases]
    return tuple(upright(canvas, orientation) for canvas in canvases), tuple(durations)


def _blends_over_an_ignored_key(frame: Image.Image) -> bool:
    """An APNG frame blended over the canvas in a mode whose colour key Pillow then ignores."""
    return (
        frame.format == "PNG"
        and frame.mode in _UNBLENDED_KEY_MODES
        and "transparency" in frame.info
        and frame.info.get("blend") == PngImagePlugin.Blend.OP_OVER
    )


def _still_pixels(im: Image.Image) -> np.ndarray:
    """Pixels of one Pillow frame in one of the four layouts (not yet upright)."""
    mode = im.mode
    if mode in _UINT16_MODES:
        pixels = np.asarray(im).astype(np.uint16)
    elif mode == "I":
        pixels = _int_to_uint16(np.asarray(im))
    else:
        target = _PILLOW_TARGET_MODE.get(mode)
        if target is None:
            raise UnsupportedLayoutError(f"pixel mode {mode} is not supported")
        if mode == "P" and "transparency" in im.info:
            target = "RGBA"
        pixels = np.asarray(im if mode == target else im.convert(target))
    key = im.info.get("transparency")
    if mode in _KEYED_MODES and key is not None:
        pixels = add_key_alpha(pixels, key)
    return pixels


def _int_to_uint16(pixels: np.ndarray) -> np.ndarray:
    if pixels.size and (pixels.min() < 0 or pixels.max() > 0xFFFF):
        raise UnsupportedLayoutError("32-bit integer pixels beyond the 16-bit range")
    return pixels.astype(np.uint16)


# --- WebP -----------------------------------------------------------------------------------


def _riff_chunks(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = 0
    while position + 8 <= len(body):
        tag = body[position : position + 4]
        size = int.from_bytes(body[position + 4 : position + 8], "little")
        yield tag, body[position + 8 : position + 8 + size]
        position += 8 + size + (size & 1)


def _webp_is_lossless(data: bytes) -> bool:
    """True when every bitstream in a WebP file, animation frames included, is VP8L."""
    kinds: set[bytes] = set()
    for tag, payload in _riff_chunks(data[12:]):
        if tag == b"ANMF":
            # An animation frame: a 16-byte header, then the frame's own chunks.
            kinds.update(sub_tag for sub_tag, _ in _riff_chunks(payload[16:]))
        else:
            kinds.add(tag)
    return b"VP8L" in kinds and b"VP8 " not in kinds
