"""Image files in and out: upright pixels of every frame, written back in the source's own format.

``decode_image`` turns file bytes into a ``DecodedImage``: the pixels of every frame, turned
upright (EXIF, XMP and AVIF orientation applied), in one of four channel-last layouts:

    HxW      gray            HxWx2  gray + alpha
    HxWx3    RGB (never BGR) HxWx4  RGB + alpha

with dtype ``uint8`` or ``uint16`` (16-bit PNG and TIFF stay 16-bit). ``encode_image`` writes
such pixels back in the source's format, with exactly the layout and bit depth it is given,
without metadata unless asked (and then never GPS, XMP, maker notes or an orientation tag).

Decisions worth knowing:

* Pixel counts are checked from the headers before any pixels are decoded; Pillow's own
  decompression-bomb limit is lifted only inside this module's calls into Pillow (under a lock,
  see ``_pillow_guard``), so the caller's ``max_pixels`` is the one limit that applies.
* Every frame of a multi-frame file is decoded (GIF/WebP/APNG/AVIF animations as composited
  canvases, MPO/TIFF/HEIF pages one by one): a frame that is skipped would leave faces unmasked.
* A file whose EXIF cannot be read is decoded as if its orientation were 1 and a warning is
  logged: the corrupt EXIF in the corpus still holds orientation 1 and its pixels are upright.
* Decoded frames are read-only views: masking must build new arrays, never write in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageSequence, UnidentifiedImageError

from anon_tasks.errors import (
    ImageDecodeError,
    ImageEncodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from anon_tasks.settings import OutputSettings

__all__ = [
    "DecodedImage",
    "color_channel_count",
    "decode_image",
    "encode_image",
    "to_detector_rgb",
    "with_frames",
]

logger = logging.getLogger(__name__)

pillow_heif.register_heif_opener()

#: Pillow format names this module reads and writes back. MPO is reached through the JPEG opener.
SUPPORTED_FORMATS: Final[tuple[str, ...]] = (
    "JPEG",
    "MPO",
    "PNG",
    "WEBP",
    "GIF",
    "TIFF",
    "AVIF",
    "HEIF",
)
_UNIDENTIFIED: Final = "not an image, or not one of " + ", ".join(SUPPORTED_FORMATS)
_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(fmt for fmt in SUPPORTED_FORMATS if fmt != "MPO")
#: Multi-frame files of these formats are animations: one canvas, per-frame durations.
_ANIMATION_FORMATS: Final[frozenset[str]] = frozenset({"GIF", "WEBP", "PNG", "AVIF"})

_TAG_ORIENTATION: Final = 0x0112
_TAG_EXIF_IFD: Final = 0x8769
#: IFD0 tags never written back: location, orientation, XMP/IPTC/Photoshop blocks and
#: pointers to embedded preview images (which would show the unmasked faces).
_DROPPED_IFD0_TAGS: Final[frozenset[int]] = frozenset(
    {0x0112, 0x8825, 0x02BC, 0x83BB, 0x8649, 0x014A, 0x0201, 0x0202, 0x8769}
)
#: Exif sub-IFD tags never written back: maker notes can hold preview images; the interop
#: pointer cannot be carried over as a bare offset.
_DROPPED_EXIF_IFD_TAGS: Final[frozenset[int]] = frozenset({0x927C, 0xA005})

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
_ALPHA_MODES: Final[frozenset[str]] = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
#: Modes whose ``transparency`` info is a colour key that becomes an alpha channel.
_KEYED_MODES: Final[frozenset[str]] = frozenset({"L", "RGB"} | _UINT16_MODES)

#: Upright pixels from stored pixels, per EXIF orientation (same transforms as Pillow's
#: ``ImageOps.exif_transpose``).
_ORIENTATION_FIXES: Final[dict[int, Callable[[np.ndarray], np.ndarray]]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: PNG colour type per channel count (gray, gray+alpha, RGB, RGBA).
_PNG_COLOUR_TYPES: Final[dict[int, int]] = {1: 0, 2: 4, 3: 2, 4: 6}

# Pillow's pixel limit, truncated-image loading and the warning filters are process-wide. The
# first thread into ``_pillow_guard`` sets them, the last one out restores them, so decoding and
# encoding run in parallel threads (Pillow releases the GIL while it decodes) and the switches
# are never left changed.
_GUARD_LOCK = threading.Lock()
_guard_holders = 0
_guard_saved: tuple[contextlib.AbstractContextManager[Any], Any, bool] | None = None
_guard_thread = threading.local()


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """The upright pixels of every frame of one image file, and what is needed to write it back.

    Attributes:
        frames: Pixels of each frame: HxW, HxWx2, HxWx3 or HxWx4, uint8 or uint16, RGB order,
            stored as read-only views (build new arrays to change them).
        format: Pillow's name of the source format: JPEG, MPO, PNG, WEBP, GIF, TIFF, AVIF, HEIF.
        icc_profile: The source's ICC profile when it fits the pixels (RGB or gray), else None.
        exif: The source's raw EXIF block; written (filtered) only with ``keep_metadata``.
        durations_ms: Display time of each frame of an animation; empty for stills and pages.
        loop: Animation loop count (0: forever); None when the source has none.
        lossless: The source was lossless WebP, so the output is too.
        progressive: The source was a progressive JPEG, so the output is too.
        jpeg_subsampling: The source JPEG's chroma subsampling as Pillow numbers it (0: 4:4:4,
            1: 4:2:2, 2: 4:2:0), kept in the output; None when not a JPEG or unknown.
    """

    frames: tuple[np.ndarray, ...]
    format: str
    icc_profile: bytes | None = None
    exif: bytes | None = None
    durations_ms: tuple[int, ...] = ()
    loop: int | None = None
    lossless: bool = False
    progressive: bool = False
    jpeg_subsampling: int | None = None

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        if not frames:
            raise ValueError("a DecodedImage needs at least one frame")
        for frame in frames:
            _check_layout(frame)
        if self.durations_ms and len(self.durations_ms) != len(frames):
            raise ValueError(
                f"{len(self.durations_ms)} durations for {len(frames)} frames; "
                "an animation keeps its frame count"
            )
        object.__setattr__(self, "frames", tuple(_read_only_view(frame) for frame in frames))
        object.__setattr__(self, "durations_ms", tuple(int(d) for d in self.durations_ms))

    @property
    def size_wh(self) -> tuple[int, int]:
        """Width and height of the first frame, in upright pixels."""
        height, width = self.frames[0].shape[:2]
        return width, height

    @property
    def is_animation(self) -> bool:
        """True for an animation (frames with durations), False for a still or a set of pages."""
        return bool(self.durations_ms)


def with_frames(image: DecodedImage, frames: Sequence[np.ndarray]) -> DecodedImage:
    """Return ``image`` with new pixels and the same metadata (for writing masked frames back)."""
    return dataclasses.replace(image, frames=tuple(frames))


def color_channel_count(frame: np.ndarray) -> int:
    """Return how many leading channels of ``frame`` are colour: 1 (gray, gray+alpha) or 3.

    Raises:
        ValueError: ``frame`` is not one of the four layouts in uint8 or uint16.
    """
    _check_layout(frame)
    return 1 if frame.ndim == 2 or frame.shape[2] == 2 else 3


def to_detector_rgb(frame: np.ndarray) -> np.ndarray:
    """Return ``frame`` as C-contiguous uint8 HxWx3 RGB for the face detector.

    Gray is replicated to three channels, alpha is dropped (not composited) and 16-bit values
    are scaled to 8 bits over the full range (``round(x / 257)``). A frame that already is
    C-contiguous uint8 RGB comes back as it is (no copy; treat it as read-only).

    Raises:
        ValueError: ``frame`` is not one of the four layouts in uint8 or uint16.
    """
    colour = frame[..., : color_channel_count(frame)] if frame.ndim == 3 else frame
    if colour.dtype == np.uint16:
        # (x + 128) // 257 is round(x / 257) in integers: 0..65535 maps onto 0..255 evenly.
        colour = ((colour.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if colour.ndim == 2:
        colour = colour[..., np.newaxis]
    if colour.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(colour, 3, axis=2))
    return np.ascontiguousarray(colour, dtype=np.uint8)


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
        UnsupportedImageError: A layout this module cannot carry (float pixels, 16-bit
            colour animations).
        ImageDecodeError: Not an image of a supported format, truncated or corrupt.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with _pillow_guard() as caught:
            return _decode(bytes(data), source, max_pixels)
    except ImageError:
        raise
    except _UnsupportedLayoutError as exc:
        raise UnsupportedImageError(str(exc), source=source) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(_UNIDENTIFIED, source=source) from exc
    except Exception as exc:  # Pillow, libavif, libheif, OpenCV and zlib raise many types
        raise ImageDecodeError(f"cannot decode image: {_describe(exc)}", source=source) from exc
    finally:
        _log_warnings(caught, source)


def encode_image(
    image: DecodedImage, *, settings: OutputSettings, source: str = "<bytes>"
) -> bytes:
    """Encode ``image`` in its source format, with the layout and bit depth of its frames.

    Metadata is stripped unless ``settings.keep_metadata``: then the source EXIF is written
    without GPS, orientation, maker notes, thumbnails or XMP. The ICC profile is always kept.

    Args:
        image: The frames to write and the source's metadata.
        settings: Output quality and metadata policy.
        source: The file's name or URL, for error messages.

    Returns:
        The encoded file.

    Raises:
        UnsupportedImageError: The format cannot hold these frames faithfully.
        ImageEncodeError: The encoder failed.
    """
    encoder = _ENCODERS.get(image.format)
    if encoder is None:
        raise UnsupportedImageError(f"cannot write {image.format} images", source=source)
    try:
        _check_writable(image)
        exif = _output_exif(image.exif, source) if settings.keep_metadata else None
        return encoder(image, settings, exif)
    except _UnsupportedLayoutError as exc:
        raise UnsupportedImageError(str(exc), source=source) from exc
    except Exception as exc:  # any encoder failure is reported as this image's failure
        raise ImageEncodeError(
            f"cannot encode {image.format}: {_describe(exc)}", source=source
        ) from exc


# --- shared helpers -------------------------------------------------------------------------


class _UnsupportedLayoutError(Exception):
    """Pixels or a format combination that cannot be carried; mapped to UnsupportedImageError."""


def _check_layout(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, not {type(frame).__name__}")
    if frame.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a frame must be uint8 or uint16, not {frame.dtype}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (2, 3, 4))):
        raise ValueError(f"a frame must be HxW, HxWx2, HxWx3 or HxWx4, not {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a frame must not be empty, got {frame.shape}")


def _read_only_view(frame: np.ndarray) -> np.ndarray:
    view = frame.view()
    view.flags.writeable = False
    return view


def _channels(frame: np.ndarray) -> int:
    return 1 if frame.ndim == 2 else int(frame.shape[2])


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_warnings(caught: Sequence[warnings.WarningMessage], source: str) -> None:
    for item in caught:
        logger.warning("%s: %s: %s", source, item.category.__name__, item.message)


@contextlib.contextmanager
def _pillow_guard() -> Iterator[list[warnings.WarningMessage]]:
    """Lift Pillow's pixel limit, forbid truncated loading and record this thread's warnings;
    the switches are restored when the last thread inside leaves."""
    global _guard_holders, _guard_saved
    with _GUARD_LOCK:
        if _guard_holders == 0:
            filters = warnings.catch_warnings()
            filters.__enter__()
            # Recorded warnings are logged by the caller; "always" keeps repeats from being lost.
            warnings.simplefilter("always")
            original_show = warnings.showwarning
            warnings.showwarning = functools.partial(_route_warning, original_show)
            _guard_saved = (filters, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            # Our own max_pixels check replaces Pillow's, which would refuse or warn at its own
            # fixed limit; truncated files must fail rather than come out half grey.
            Image.MAX_IMAGE_PIXELS = None
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _guard_holders += 1
    caught: list[warnings.WarningMessage] = []
    outer = getattr(_guard_thread, "caught", None)
    _guard_thread.caught = caught
    try:
        yield caught
    finally:
        _guard_thread.caught = outer
        with _GUARD_LOCK:
            _guard_holders -= 1
            if _guard_holders == 0 and _guard_saved is not None:
                filters, limit, truncated = _guard_saved
                _guard_saved = None
                Image.MAX_IMAGE_PIXELS = limit
                ImageFile.LOAD_TRUNCATED_IMAGES = truncated
                filters.__exit__(None, None, None)


def _route_warning(
    original: Callable[..., None],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Keep a warning for the guarded thread that raised it; others go where they went."""
    caught = getattr(_guard_thread, "caught", None)
    if caught is None:
        original(message, category, filename, lineno, file, line)
        return
    caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))


# --- decoding -------------------------------------------------------------------------------


def _decode(data: bytes, source: str, max_pixels: int) -> DecodedImage:
    with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as im:
        fmt = str(im.format)
        n_frames = _check_pixel_budget(im, max_pixels, source)
        # Container metadata is read before seeking: later frames may carry their own.
        icc = im.info.get("icc_profile")
        exif = _source_exif(im)
        loop = im.info.get("loop")
        progressive = bool(im.info.get("progressive"))
        subsampling = _jpeg_subsampling(im) if fmt in ("JPEG", "MPO") else None
        durations: tuple[int, ...] = ()
        if _is_high_bit_colour(im, data):
            frames = _high_bit_frames(im, data, n_frames, source)
        elif n_frames > 1 and fmt in _ANIMATION_FORMATS:
            frames, durations = _animation_frames(im, source)
        else:
            frames = _page_frames(im, max_pixels, source)
    return DecodedImage(
        frames=frames,
        format=fmt,
        icc_profile=_matching_icc(icc, frames[0]),
        exif=exif,
        durations_ms=durations,
        loop=loop if durations and isinstance(loop, int) else None,
        lossless=fmt == "WEBP" and _webp_is_lossless(data),
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


def _source_exif(im: Image.Image) -> bytes | None:
    raw = im.info.get("exif")
    return bytes(raw) if isinstance(raw, bytes) and raw else None


def _orientation(im: Image.Image, source: str) -> int:
    """EXIF orientation of the current frame (Pillow also reads XMP and AVIF irot/imir)."""
    try:
        value = im.getexif().get(_TAG_ORIENTATION, 1)
    except Exception as exc:  # a corrupt EXIF block must not cost the pixels
        logger.warning("%s: unreadable EXIF, assuming upright: %s", source, _describe(exc))
        return 1
    if not isinstance(value, int) or not 1 <= value <= 8:
        logger.warning("%s: invalid EXIF orientation %r, assuming upright", source, value)
        return 1
    return value


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    fix = _ORIENTATION_FIXES.get(orientation)
    return np.ascontiguousarray(pixels if fix is None else fix(pixels))


def _page_frames(im: Image.Image, max_pixels: int, source: str) -> tuple[np.ndarray, ...]:
    """Decode each page (a still has one) on its own, each with its own orientation."""
    frames: list[np.ndarray] = []
    spent = 0
    for page in ImageSequence.Iterator(im):
        # Pages may be larger than the first one the headers check looked at.
        spent += page.width * page.height
        if spent > max_pixels:
            raise ImageTooLargeError(
                f"pages hold more than the limit of {max_pixels} pixels", source=source
            )
        frames.append(_upright(_still_pixels(page), _orientation(page, source)))
    return tuple(frames)


def _animation_frames(
    im: Image.Image, source: str
) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Decode each composited canvas of an animation, RGBA when any frame is transparent."""
    orientation = _orientation(im, source)
    canvases: list[np.ndarray] = []
    durations: list[int] = []
    transparent = False
    for frame in ImageSequence.Iterator(im):
        transparent = transparent or _has_transparency(frame)
        canvases.append(np.asarray(frame.convert("RGBA")))
        durations.append(round(float(frame.info.get("duration") or 0)))
    frames = tuple(_upright(c if transparent else c[..., :3], orientation) for c in canvases)
    return frames, tuple(durations)


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


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
            raise _UnsupportedLayoutError(f"pixel mode {mode} is not supported")
        if mode == "P" and "transparency" in im.info:
            target = "RGBA"
        pixels = np.asarray(im if mode == target else im.convert(target))
    key = im.info.get("transparency")
    if mode in _KEYED_MODES and key is not None:
        pixels = _add_key_alpha(pixels, key)
    return pixels


def _int_to_uint16(pixels: np.ndarray) -> np.ndarray:
    if pixels.size and (pixels.min() < 0 or pixels.max() > 0xFFFF):
        raise _UnsupportedLayoutError("32-bit integer pixels beyond the 16-bit range")
    return pixels.astype(np.uint16)


def _add_key_alpha(pixels: np.ndarray, key: Any) -> np.ndarray:
    """Turn a PNG tRNS colour key into an alpha channel (0 on the key colour, opaque elsewhere)."""
    opaque = np.iinfo(pixels.dtype).max
    if pixels.ndim == 2 and isinstance(key, int):
        hidden = pixels == key
    elif pixels.ndim == 3 and isinstance(key, tuple) and len(key) == pixels.shape[2]:
        hidden = np.all(pixels == np.asarray(key, dtype=pixels.dtype), axis=2)
    else:
        return pixels
    alpha = np.where(hidden, 0, opaque).astype(pixels.dtype)
    colour = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    return np.concatenate([colour, alpha[..., np.newaxis]], axis=2)


def _matching_icc(icc: Any, frame: np.ndarray) -> bytes | None:
    """Keep an ICC profile only when its colour space is the pixels' (not CMYK after converting)."""
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    wanted = b"GRAY" if color_channel_count(frame) == 1 else b"RGB "
    if icc[16:20] != wanted:
        logger.debug("dropping a %r ICC profile for %r pixels", icc[16:20], wanted)
        return None
    return icc


# 16-bit colour: Pillow reduces 16-bit RGB(A) to 8 bits, so OpenCV decodes those pixels.


def _png_header(data: bytes) -> tuple[int, int] | None:
    """Bit depth and colour type from a PNG's IHDR, or None when it is not a plain PNG."""
    if len(data) < 29 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _is_high_bit_colour(im: Image.Image, data: bytes) -> bool:
    if im.format == "PNG":
        header = _png_header(data)
        return header is not None and header[0] == 16 and header[1] in (2, 4, 6)
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) > 8 and int(tags.get(277, 1)) >= 3
    return False


def _high_bit_frames(
    im: Image.Image, data: bytes, n_frames: int, source: str
) -> tuple[np.ndarray, ...]:
    if n_frames > 1:
        raise _UnsupportedLayoutError("multi-frame 16-bit colour images are not supported")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or decoded.dtype != np.uint16:
        raise ImageDecodeError("OpenCV cannot decode the 16-bit colour pixels", source=source)
    pixels = _bgr_to_rgb(decoded)
    if im.format == "PNG" and _png_header(data) == (16, 4):
        pixels = pixels[..., [0, 3]]  # OpenCV expands gray+alpha to BGRA
    key = im.info.get("transparency")
    if pixels.shape[2] == 3 and key is not None:
        pixels = _add_key_alpha(pixels, key)
    if im.format == "TIFF" and getattr(im, "tag_v2", {}).get(338) in (1, (1,)):
        pixels = _unpremultiply(pixels)
    return (_upright(pixels, _orientation(im, source)),)


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


# --- encoding -------------------------------------------------------------------------------

_U8: Final = np.dtype(np.uint8)
_U16: Final = np.dtype(np.uint16)
_ALL_8BIT: Final = frozenset({(_U8, 1), (_U8, 2), (_U8, 3), (_U8, 4)})
_ALL_16BIT: Final = frozenset({(_U16, 1), (_U16, 2), (_U16, 3), (_U16, 4)})
_COLOUR_8BIT: Final = frozenset({(_U8, 3), (_U8, 4)})
_OPAQUE_8BIT: Final = frozenset({(_U8, 1), (_U8, 3)})

#: (dtype, channels) each format writes back so that decoding gives the same layout.
_WRITABLE_LAYOUTS: Final[dict[str, frozenset[tuple[np.dtype[Any], int]]]] = {
    "JPEG": _OPAQUE_8BIT,
    "MPO": _OPAQUE_8BIT,
    "PNG": _ALL_8BIT | _ALL_16BIT,
    "WEBP": _COLOUR_8BIT,
    "GIF": _COLOUR_8BIT,
    # Nothing reads back 16-bit gray+alpha TIFF (Pillow cannot identify it, OpenCV drops alpha).
    "TIFF": _ALL_8BIT | frozenset({(_U16, 1), (_U16, 3), (_U16, 4)}),
    # Monochrome AVIF/HEIF decode as gray and are written back as such.
    "AVIF": _COLOUR_8BIT | {(_U8, 1)},
    "HEIF": _COLOUR_8BIT | {(_U8, 1)},
}


def _check_writable(image: DecodedImage) -> None:
    allowed = _WRITABLE_LAYOUTS[image.format]
    for frame in image.frames:
        layout = (frame.dtype, _channels(frame))
        if layout not in allowed:
            raise _UnsupportedLayoutError(
                f"{image.format} cannot hold {_channels(frame)}-channel {frame.dtype} pixels"
            )
    if image.is_animation and len({f.shape for f in image.frames}) > 1:
        raise _UnsupportedLayoutError("animation frames differ in size or layout")


def _output_exif(raw: bytes | None, source: str) -> bytes | None:
    """The source EXIF without location, orientation, previews, maker notes or XMP."""
    if not raw:
        return None
    caught: list[warnings.WarningMessage] = []
    try:
        with _pillow_guard() as caught:
            return _filtered_exif(raw)
    except Exception as exc:  # stripping is the safe fallback for metadata we cannot rewrite
        logger.warning("%s: EXIF cannot be rewritten, writing none: %s", source, _describe(exc))
        return None
    finally:
        _log_warnings(caught, source)


def _filtered_exif(raw: bytes) -> bytes | None:
    original = Image.Exif()
    original.load(raw)
    # A fresh Exif: Pillow would write back any sub-IFD (GPS too) it had cached while loading.
    kept = Image.Exif()
    for tag, value in original.items():
        if tag not in _DROPPED_IFD0_TAGS:
            kept[tag] = value
    exif_ifd = {
        tag: value
        for tag, value in original.get_ifd(_TAG_EXIF_IFD).items()
        if tag not in _DROPPED_EXIF_IFD_TAGS
    }
    if exif_ifd:
        kept[_TAG_EXIF_IFD] = exif_ifd
    return kept.tobytes() if len(kept) else None


def _pil_frames(image: DecodedImage) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in image.frames]


def _metadata_options(image: DecodedImage, exif: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    if exif:
        options["exif"] = exif
    return options


def _animation_options(image: DecodedImage) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if len(image.frames) > 1:
        options["save_all"] = True
    if image.is_animation:
        options["duration"] = list(image.durations_ms)
    if image.loop is not None:
        options["loop"] = image.loop
    return options


def _save(frames: Sequence[Image.Image], fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    if len(frames) > 1:
        options["append_images"] = list(frames[1:])
    frames[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg_options(image: DecodedImage, settings: OutputSettings) -> dict[str, Any]:
    quality = settings.jpeg_quality
    # A JPEG source keeps its chroma subsampling (re-encoding 4:2:0 chroma at full resolution
    # adds bytes and encoding time, not detail); other sources get full-resolution chroma at
    # high quality, where 4:2:0 would smear the coloured edges of masks.
    subsampling = image.jpeg_subsampling
    if subsampling is None:
        subsampling = 0 if quality >= 90 else 2
    return {
        "quality": quality,
        "subsampling": subsampling,
        "optimize": True,
        "progressive": image.progressive,
    }


#: OpenCV's chroma sampling settings by Pillow's subsampling number.
_CV2_SAMPLING: Final[dict[int, int]] = {
    0: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    1: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    2: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}
#: Largest payload of one JPEG marker segment (its 16-bit length counts itself).
_SEGMENT_MAX: Final = 0xFFFF - 2
_ICC_HEADER: Final = b"ICC_PROFILE\x00"
_EXIF_HEADER: Final = b"Exif\x00\x00"


def _encode_jpeg(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    """JPEG through libjpeg in OpenCV, which releases the GIL (Pillow's JPEG encoder holds it,
    so encoding would not scale over threads), with the same settings Pillow would use; the
    ICC profile and EXIF go in as APP2 and APP1 segments."""
    options = _jpeg_options(image, settings)
    frame = image.frames[0]
    pixels = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        options["quality"],
        cv2.IMWRITE_JPEG_OPTIMIZE,
        int(options["optimize"]),
        cv2.IMWRITE_JPEG_PROGRESSIVE,
        int(options["progressive"]),
    ]
    if frame.ndim == 3:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _CV2_SAMPLING[options["subsampling"]]]
    ok, encoded = cv2.imencode(".jpg", pixels, params)
    if not ok:
        raise OSError("libjpeg refused the frame")
    return _with_app_segments(encoded.tobytes(), exif=exif, icc_profile=image.icc_profile)


def _with_app_segments(jpeg: bytes, *, exif: bytes | None, icc_profile: bytes | None) -> bytes:
    """``jpeg`` with an EXIF (APP1) and an ICC profile (APP2, split as the ICC spec says)
    segment inserted after the JFIF header, where Pillow and cameras put them."""
    segments = []
    if exif:
        payload = exif if exif.startswith(_EXIF_HEADER) else _EXIF_HEADER + exif
        if len(payload) > _SEGMENT_MAX:
            raise ValueError("EXIF data is too long for one APP1 segment")
        segments.append(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    if icc_profile:
        room = _SEGMENT_MAX - len(_ICC_HEADER) - 2
        chunks = [icc_profile[i : i + room] for i in range(0, len(icc_profile), room)]
        if len(chunks) > 255:
            raise ValueError("ICC profile is too large for JPEG")
        for number, chunk in enumerate(chunks, start=1):
            payload = _ICC_HEADER + bytes((number, len(chunks))) + chunk
            segments.append(b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload)
    if not segments:
        return jpeg
    position = 2  # after SOI
    if jpeg[2:4] == b"\xff\xe0":  # after the JFIF APP0 segment
        position = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:position] + b"".join(segments) + jpeg[position:]


def _encode_mpo(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _jpeg_options(image, settings) | _metadata_options(image, exif)
    frames = _pil_frames(image)
    if len(frames) > 1:
        options["save_all"] = True
    return _save(frames, "MPO", **options)


def _encode_png(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings  # PNG is lossless: there is nothing to tune
    if image.frames[0].dtype == np.uint16:
        if len(image.frames) > 1:
            raise _UnsupportedLayoutError("16-bit animated PNG is not supported")
        return _encode_png16(image.frames[0], image.icc_profile, exif)
    options = _metadata_options(image, exif) | _animation_options(image)
    return _save(_pil_frames(image), "PNG", **options)


def _encode_webp(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | _animation_options(image)
    # exact keeps the colour under transparent pixels, so lossless stays bit-exact.
    options |= {"lossless": image.lossless, "quality": settings.jpeg_quality, "exact": True}
    return _save(_pil_frames(image), "WEBP", **options)


def _encode_gif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # GIF has no quality setting and no EXIF
    frames = [_gif_palette_frame(frame) for frame in image.frames]
    options = _animation_options(image)
    options["optimize"] = False  # Pillow's palette optimisation may reorder our transparent index
    return _save(frames, "GIF", **options)


def _gif_palette_frame(frame: np.ndarray) -> Image.Image:
    """Quantise one RGB(A) frame to a palette; alpha below 128 becomes the transparent index."""
    rgb = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
    if frame.shape[2] == 3:
        return rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    # Index 255 is kept for transparency, so the visible colours get at most 255 entries.
    paletted = rgb.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    indices = np.asarray(paletted).copy()
    indices[frame[..., 3] < 128] = 255
    palette = paletted.getpalette() or []
    palette = (palette + [0] * 768)[:768]
    result = Image.fromarray(indices, mode="P")
    result.putpalette(palette)
    result.info["transparency"] = 255
    return result


def _encode_tiff(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # TIFF is written lossless; its tags are rebuilt, EXIF is not carried
    if image.frames[0].dtype == np.uint16:
        if len(image.frames) > 1:
            raise _UnsupportedLayoutError("multi-page 16-bit TIFF is not supported")
        return _encode_tiff16(image.frames[0], image.icc_profile)
    options = _metadata_options(image, None) | {"compression": "tiff_adobe_deflate"}
    if len(image.frames) > 1:
        options["save_all"] = True
    return _save(_pil_frames(image), "TIFF", **options)


def _encode_avif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | _animation_options(image)
    options["quality"] = settings.jpeg_quality
    return _save(_pil_frames(image), "AVIF", **options)


def _encode_heif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | {"quality": settings.jpeg_quality}
    if len(image.frames) > 1:
        options["save_all"] = True
    return _save(_pil_frames(image), "HEIF", **options)


_ENCODERS: Final[dict[str, Callable[[DecodedImage, OutputSettings, bytes | None], bytes]]] = {
    "JPEG": _encode_jpeg,
    "MPO": _encode_mpo,
    "PNG": _encode_png,
    "WEBP": _encode_webp,
    "GIF": _encode_gif,
    "TIFF": _encode_tiff,
    "AVIF": _encode_avif,
    "HEIF": _encode_heif,
}


# 16-bit PNG: Pillow cannot write 16-bit colour or gray+alpha, and OpenCV cannot write
# gray+alpha, so this writes the few chunks itself (every 16-bit layout, ICC and EXIF kept).


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def _png_up_filtered(rows: np.ndarray) -> bytes:
    """Rows of bytes with PNG filter 2 (Up) applied, each prefixed with its filter type."""
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter wants
    prefix = np.full((rows.shape[0], 1), 2, dtype=np.uint8)
    return np.hstack([prefix, filtered]).tobytes()


def _encode_png16(frame: np.ndarray, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    height, width = frame.shape[:2]
    channels = _channels(frame)
    rows = np.ascontiguousarray(frame, dtype=">u2").reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(_png_up_filtered(rows.view(np.uint8)), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


# 16-bit TIFF: Pillow cannot write 16-bit colour and OpenCV drops the ICC profile and leaves
# alpha unlabelled, so this writes one little-endian IFD with a single deflated strip.

_TIFF_STRIP_OFFSETS: Final = 273
_TIFF_SHORT: Final = 3
_TIFF_LONG: Final = 4
_TIFF_UNDEFINED: Final = 7
_TIFF_FIELD_SIZES: Final[dict[int, int]] = {_TIFF_SHORT: 2, _TIFF_LONG: 4, _TIFF_UNDEFINED: 1}
_TIFF_FIELD_CODES: Final[dict[int, str]] = {_TIFF_SHORT: "H", _TIFF_LONG: "I", _TIFF_UNDEFINED: "B"}


def _tiff_predicted(frame: np.ndarray) -> bytes:
    """Samples with TIFF predictor 2 (horizontal differences), little-endian."""
    samples = frame.reshape(frame.shape[0], frame.shape[1], -1)
    differences = samples.copy()
    differences[:, 1:] -= samples[:, :-1]  # uint16 arithmetic wraps modulo 65536, as required
    return np.ascontiguousarray(differences, dtype="<u2").tobytes()


def _tiff_entries(
    frame: np.ndarray, strip: bytes, icc_profile: bytes | None
) -> list[tuple[int, int, list[int] | bytes]]:
    height, width = frame.shape[:2]
    channels = _channels(frame)
    entries: list[tuple[int, int, list[int] | bytes]] = [
        (256, _TIFF_LONG, [width]),
        (257, _TIFF_LONG, [height]),
        (258, _TIFF_SHORT, [16] * channels),
        (259, _TIFF_SHORT, [8]),  # Adobe deflate
        (262, _TIFF_SHORT, [1 if channels <= 2 else 2]),  # BlackIsZero or RGB
        (_TIFF_STRIP_OFFSETS, _TIFF_LONG, [0]),  # filled in by _encode_tiff16
        (277, _TIFF_SHORT, [channels]),
        (278, _TIFF_LONG, [height]),
        (279, _TIFF_LONG, [len(strip)]),
        (284, _TIFF_SHORT, [1]),  # chunky samples
        (317, _TIFF_SHORT, [2]),  # horizontal differencing
    ]
    if channels in (2, 4):
        entries.append((338, _TIFF_SHORT, [2]))  # unassociated alpha
    if icc_profile:
        entries.append((34675, _TIFF_UNDEFINED, icc_profile))
    return entries


def _encode_tiff16(frame: np.ndarray, icc_profile: bytes | None) -> bytes:
    strip = zlib.compress(_tiff_predicted(frame), 6)
    entries = _tiff_entries(frame, strip, icc_profile)
    strip_offset = 8
    ifd_offset = strip_offset + len(strip) + (len(strip) & 1)
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = [struct.pack("<H", len(entries))]
    extra: list[bytes] = []
    for tag, field_type, stored in entries:
        values = [strip_offset] if tag == _TIFF_STRIP_OFFSETS else stored
        payload = (
            bytes(values)
            if isinstance(values, bytes)
            else struct.pack(f"<{len(values)}{_TIFF_FIELD_CODES[field_type]}", *values)
        )
        count = len(payload) // _TIFF_FIELD_SIZES[field_type]
        if len(payload) <= 4:
            ifd.append(struct.pack("<HHI", tag, field_type, count) + payload.ljust(4, b"\x00"))
        else:
            offset = extra_offset + sum(len(block) for block in extra)
            ifd.append(struct.pack("<HHII", tag, field_type, count, offset))
            extra.append(payload + b"\x00" * (len(payload) & 1))
    ifd.append(struct.pack("<I", 0))
    header = b"II*\x00" + struct.pack("<I", ifd_offset)
    padding = b"\x00" * (len(strip) & 1)
    return header + strip + padding + b"".join(ifd) + b"".join(extra)
