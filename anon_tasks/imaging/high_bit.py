"""16-bit pixels that Pillow cannot carry: read through OpenCV, written by PNG and TIFF writers.

Pillow reduces 16-bit RGB(A) to 8 bits when it reads, and cannot write 16-bit colour, 16-bit
gray+alpha or 16-bit APNG; OpenCV cannot write gray+alpha, drops TIFF ICC profiles and leaves
TIFF alpha unlabelled. So:

* 16-bit colour PNG and TIFF are decoded by OpenCV, from the neutralised bytes of
  ``stored.StoredFile`` (OpenCV's TIFF decoder would apply the orientation tag itself).
* 16-bit PNG is written chunk by chunk here: every 16-bit layout, ICC and EXIF kept; several
  frames as an APNG of full canvases, each replacing the one before.
* 16-bit TIFF is written by tifffile: one little-endian directory per page, each page one
  deflated strip with horizontal differencing, alpha labelled unassociated, the ICC profile on
  every page.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import Final

import cv2
import numpy as np
from PIL import Image

from anon_tasks.core.errors import ImageDecodeError, ImageTooLargeError
from anon_tasks.imaging.decoded import (
    DecodedImage,
    UnsupportedLayoutError,
    add_key_alpha,
    channel_count,
)
from anon_tasks.imaging.layouts import has_partial_alpha
from anon_tasks.imaging.metadata import EXIF_HEADER
from anon_tasks.imaging.orientation import display_orientation, upright
from anon_tasks.imaging.stored import PNG_SIGNATURE, StoredFile, TiffPage

__all__ = [
    "encode_png16",
    "encode_tiff16",
    "high_bit_png_frames",
    "high_bit_tiff_frames",
    "is_high_bit_png",
    "is_high_bit_tiff",
]

#: PNG colour type per channel count (gray, gray+alpha, RGB, RGBA).
_PNG_COLOUR_TYPES: Final[dict[int, int]] = {1: 0, 2: 4, 3: 2, 4: 6}


# --- reading --------------------------------------------------------------------------------


def is_high_bit_png(data: bytes) -> bool:
    """Whether a PNG holds 16-bit colour (with or without alpha), which Pillow reduces."""
    header = _png_header(data)
    return header is not None and header[0] == 16 and header[1] in (2, 4, 6)


def is_high_bit_tiff(pages: Sequence[TiffPage]) -> bool:
    """True when every page holds more than 8 bits of colour; mixed files are refused.

    Raises:
        UnsupportedLayoutError: Some pages hold 16-bit colour and others do not.
    """
    deep = [page.bits_per_sample > 8 and page.samples_per_pixel >= 3 for page in pages]
    if any(deep) and not all(deep):
        raise UnsupportedLayoutError("TIFF pages mix 16-bit colour with other layouts")
    return bool(deep) and all(deep)


def high_bit_png_frames(
    im: Image.Image, stored: StoredFile, n_frames: int, source: str
) -> tuple[np.ndarray, ...]:
    """The upright frame of a 16-bit colour (or gray+alpha) PNG, decoded by OpenCV.

    Raises:
        UnsupportedLayoutError: An animation.
        ImageDecodeError: OpenCV cannot decode the pixels, or turned them.
    """
    if n_frames > 1:
        raise UnsupportedLayoutError("16-bit colour animated PNG is not supported")
    decoded = cv2.imdecode(np.frombuffer(stored.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or decoded.dtype != np.uint16:
        raise ImageDecodeError("OpenCV cannot decode the 16-bit colour pixels", source=source)
    if decoded.shape[:2] != (im.height, im.width):
        raise ImageDecodeError("OpenCV turned the 16-bit colour pixels", source=source)
    pixels = _bgr_to_rgb(decoded)
    if _png_header(stored.data) == (16, 4):
        pixels = pixels[..., [0, 3]]  # OpenCV expands gray+alpha to BGRA
    key = im.info.get("transparency")
    if pixels.shape[2] == 3 and key is not None:
        pixels = add_key_alpha(pixels, key)
    return (upright(pixels, display_orientation(im, stored, 0, source)),)


def high_bit_tiff_frames(
    im: Image.Image, stored: StoredFile, max_pixels: int, source: str
) -> tuple[np.ndarray, ...]:
    """The upright pages of a 16-bit colour TIFF, decoded by OpenCV.

    Raises:
        ImageTooLargeError: The pages hold more than ``max_pixels`` pixels.
        UnsupportedLayoutError: A page that is not 16-bit RGB(A).
        ImageDecodeError: OpenCV cannot decode the pages, or gave other shapes.
    """
    pages = stored.tiff_pages
    if sum(page.width * page.height for page in pages) > max_pixels:
        raise ImageTooLargeError(
            f"pages hold more than the limit of {max_pixels} pixels", source=source
        )
    for page in pages:
        if (page.bits_per_sample, page.photometric) != (16, 2) or page.samples_per_pixel > 4:
            raise UnsupportedLayoutError(
                f"{page.bits_per_sample}-bit TIFF with {page.samples_per_pixel} samples "
                f"(photometric {page.photometric}) is not supported"
            )
    ok, decoded = cv2.imdecodemulti(np.frombuffer(stored.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if not ok or len(decoded) != len(pages):
        raise ImageDecodeError("OpenCV cannot decode the 16-bit colour pages", source=source)
    frames: list[np.ndarray] = []
    for index, (page, pixels) in enumerate(zip(pages, decoded, strict=True)):
        expected = (page.height, page.width, page.samples_per_pixel)
        if pixels.dtype != np.uint16 or pixels.shape != expected:
            raise ImageDecodeError(
                f"OpenCV decoded a {pixels.dtype} {pixels.shape} page, not {expected}",
                source=source,
            )
        rgb = _bgr_to_rgb(pixels)
        if rgb.shape[2] == 4:
            if page.extra_samples[:1] == (1,):
                rgb = _unpremultiply(rgb)
            elif page.extra_samples[:1] != (2,):
                rgb = rgb[..., :3]  # an unspecified extra sample is not alpha
        frames.append(upright(rgb, display_orientation(im, stored, index, source)))
    return tuple(frames)


def _png_header(data: bytes) -> tuple[int, int] | None:
    """Bit depth and colour type from a PNG's IHDR, or None when it is not a plain PNG."""
    if len(data) < 29 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    order = [2, 1, 0, 3][: pixels.shape[2]]
    return pixels[..., order]


def _unpremultiply(pixels: np.ndarray) -> np.ndarray:
    """Undo TIFF associated (premultiplied) alpha, as Pillow does for 8-bit files."""
    if pixels.shape[2] != 4:
        return pixels
    alpha = pixels[..., 3:].astype(np.float64)
    colour = np.where(alpha > 0, pixels[..., :3] * 65535.0 / np.maximum(alpha, 1), 0)
    colour = np.clip(np.round(colour), 0, 65535).astype(np.uint16)
    return np.concatenate([colour, pixels[..., 3:]], axis=2)


# --- writing PNG ----------------------------------------------------------------------------


def encode_png16(image: DecodedImage, exif: bytes | None) -> bytes:
    """A 16-bit PNG of ``image``'s frame, or an APNG of full canvases for several frames.

    Raises:
        UnsupportedLayoutError: An animation of colour, of partial alpha, or without a free
            gray level for its colour key.
    """
    frames = image.frames
    animated = len(frames) > 1
    height, width = frames[0].shape[:2]
    colour_type = _PNG_COLOUR_TYPES[channel_count(frames[0])]
    key: int | None = None
    if animated and colour_type != 0:
        # Pillow reads 16-bit APNG only as gray (I;16); gray + on/off alpha goes as a colour key.
        frames, key = _gray16_keyed(frames)
        colour_type = 0
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if image.icc_profile:
        payload = b"ICC profile\x00\x00" + zlib.compress(image.icc_profile)
        chunks.append(_png_chunk(b"iCCP", payload))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(EXIF_HEADER)))
    if key is not None:
        chunks.append(_png_chunk(b"tRNS", struct.pack(">H", key)))
    if animated:
        chunks.append(_png_chunk(b"acTL", struct.pack(">II", len(frames), image.loop or 0)))
    sequence = 0
    for index, frame in enumerate(frames):
        if animated:
            duration = image.durations_ms[index] if image.durations_ms else 0
            delay = _apng_delay(duration)
            # Full canvas at (0, 0); dispose op 0 (none) and blend op 0 (source: replace).
            control = struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, *delay, 0, 0)
            chunks.append(_png_chunk(b"fcTL", control))
            sequence += 1
        if index == 0:
            chunks.append(_png_chunk(b"IDAT", _png16_data(frame)))
        else:
            payload = struct.pack(">I", sequence) + _png16_data(frame)
            chunks.append(_png_chunk(b"fdAT", payload))
            sequence += 1
    chunks.append(_png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def _png_up_filtered(rows: np.ndarray) -> bytes:
    """Rows of bytes with PNG filter 2 (Up) applied, each prefixed with its filter type."""
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter wants
    prefix = np.full((rows.shape[0], 1), 2, dtype=np.uint8)
    return np.hstack([prefix, filtered]).tobytes()


def _png16_data(frame: np.ndarray) -> bytes:
    height, width = frame.shape[:2]
    rows = np.ascontiguousarray(frame, dtype=">u2").reshape(height, width * channel_count(frame))
    return zlib.compress(_png_up_filtered(rows.view(np.uint8)), 6)


def _apng_delay(duration_ms: int) -> tuple[int, int]:
    """An APNG frame delay (numerator, denominator) for a display time in milliseconds."""
    if duration_ms <= 0xFFFF:
        return max(duration_ms, 0), 1000
    return min(round(duration_ms / 10), 0xFFFF), 100


def _gray16_keyed(frames: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], int]:
    """16-bit gray + alpha frames as gray frames and a tRNS key: hidden pixels take a gray
    level that no visible pixel of any frame has.

    Raises:
        UnsupportedLayoutError: Colour frames, partial alpha or no free gray level.
    """
    if channel_count(frames[0]) != 2:
        raise UnsupportedLayoutError("16-bit colour animated PNG is not supported")
    if any(has_partial_alpha(frame) for frame in frames):
        raise UnsupportedLayoutError("16-bit animated PNG cannot hold partial transparency")
    used = np.zeros(0x10000, bool)
    for frame in frames:
        used[frame[..., 0][frame[..., 1] != 0]] = True
    free = np.flatnonzero(~used)
    if free.size == 0:
        raise UnsupportedLayoutError("16-bit animated PNG has no free gray level for a key")
    key = int(free[-1])
    gray = tuple(
        np.where(frame[..., 1] == 0, key, frame[..., 0]).astype(np.uint16) for frame in frames
    )
    return gray, key


# --- writing TIFF ---------------------------------------------------------------------------


def encode_tiff16(frames: Sequence[np.ndarray], icc_profile: bytes | None) -> bytes:
    """A little-endian 16-bit TIFF, one directory per frame, each one deflated strip.

    Samples are chunky with horizontal differencing (predictor 2); gray is BlackIsZero, colour
    RGB; a second or fourth sample is unassociated alpha; ``icc_profile`` goes on every page.
    """
    import tifffile  # imported here: only 16-bit TIFF output needs it

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for frame in frames:
            channels = channel_count(frame)
            writer.write(
                frame,
                photometric="minisblack" if channels <= 2 else "rgb",
                planarconfig="contig" if frame.ndim == 3 else None,
                extrasamples=("unassalpha",) if channels in (2, 4) else None,
                compression="adobe_deflate",
                compressionargs={"level": 6},
                predictor="horizontal",
                rowsperstrip=frame.shape[0],
                iccprofile=icc_profile,
                software=False,
                metadata=None,
            )
    return buffer.getvalue()
