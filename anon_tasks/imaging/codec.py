"""Image files in and out: upright pixels of every frame, written back in the source's own format.

``decode_image`` turns file bytes into a ``DecodedImage``: the pixels of every frame, turned
upright the way browsers turn them, in one of four channel-last layouts:

    HxW      gray            HxWx2  gray + alpha
    HxWx3    RGB (never BGR) HxWx4  RGB + alpha

with dtype ``uint8`` or ``uint16`` (16-bit PNG and TIFF, and HEIF gray above 8 bits, stay
16-bit). ``encode_image`` writes such pixels back in the source's format (or another one, when
asked), with exactly the layout and bit depth it is given, without metadata unless asked (and
then never GPS, XMP, maker notes or an orientation tag).

Orientation is decided by one rule (``_display_orientation``) and applied exactly once, to
the stored pixels, on every decoder path:

* JPEG, MPO, PNG and WebP: the EXIF Orientation tag (JPEG APP1, PNG ``eXIf``, WebP ``EXIF``).
* TIFF: each page's own IFD Orientation tag.
* AVIF and HEIF: the container's ``irot``/``imir`` transforms, never the EXIF tag as well
  (libheif applies them while decoding HEIF; Pillow's AVIF plugin reports them instead of the
  EXIF tag and leaves the pixels stored).
* GIF and BMP have no orientation.

XMP ``tiff:Orientation`` and ImageMagick's PNG text profiles are ignored, as browsers ignore
them. Decoders that would apply an orientation themselves (Pillow's TIFF plugin, OpenCV) are
given a copy of the file whose orientation tags say 1, so they hand back the stored pixels.

Round trips are faithful or refused: decoding, then encoding without changes, then decoding
gives the same pixels (exactly for lossless formats, within the format's own loss for JPEG,
lossy WebP, AVIF and HEIF), or ``UnsupportedImageError`` says why it cannot.

Decisions worth knowing:

* Pixel counts are checked from the headers before any pixels are decoded; Pillow's own
  decompression-bomb limit is lifted only inside this module's calls into Pillow (under a lock,
  see ``_pillow_guard``), so the caller's ``max_pixels`` is the one limit that applies.
* Every frame of a multi-frame file is decoded (GIF/WebP/APNG/AVIF animations as composited
  canvases, MPO/TIFF/HEIF pages one by one): a frame that is skipped would leave faces unmasked.
* A file whose EXIF cannot be read is decoded as if its orientation were 1 and a warning is
  logged: the corrupt EXIF in the corpus still holds orientation 1 and its pixels are upright.
* Animations are written as full canvases. Pillow's and libwebp's encoders merge a frame that
  is identical to the one before it into that one's display time: what is shown is the same,
  the file has a frame fewer.
* GIF output keeps every colour when a frame has at most 256 (255 with transparency), and
  median-cut quantises otherwise; alpha becomes GIF's on/off transparency at 128.
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
from PIL import Image, ImageFile, ImageSequence, PngImagePlugin, UnidentifiedImageError

from anon_tasks.core.errors import (
    ImageDecodeError,
    ImageEncodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from anon_tasks.core.formats import SNIFF_BYTES, sniff_image_format
from anon_tasks.core.settings import OutputSettings

__all__ = [
    "DecodedImage",
    "color_channel_count",
    "decode_image",
    "detector_views",
    "encode_image",
    "is_opaque",
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
    "BMP",
    "AVIF",
    "HEIF",
)
_UNIDENTIFIED: Final = "not an image, or not one of " + ", ".join(SUPPORTED_FORMATS)
_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(fmt for fmt in SUPPORTED_FORMATS if fmt != "MPO")
#: Multi-frame files of these formats are animations: one canvas, per-frame durations.
_ANIMATION_FORMATS: Final[frozenset[str]] = frozenset({"GIF", "WEBP", "PNG", "AVIF"})
#: Multi-frame files of these formats are separate pages (or views), without timing.
_PAGE_FORMATS: Final[frozenset[str]] = frozenset({"TIFF", "MPO", "HEIF"})
#: Formats that hold one frame only.
_SINGLE_FRAME_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "BMP"})
#: Formats written without loss; a conversion from one of them to WebP is written lossless.
_LOSSLESS_FORMATS: Final[frozenset[str]] = frozenset({"PNG", "GIF", "TIFF", "BMP"})

_TAG_ORIENTATION: Final = 0x0112
_TAG_EXIF_IFD: Final = 0x8769
#: IFD0 tags written back with ``keep_metadata``: an allow-list, since any other tag (a vendor
#: ``JpgFromRaw``, a preview, XMP/IPTC blocks, GPS, orientation) may hold an unmasked face or
#: a location. Description, make, model, resolution, software, date, artist, copyright.
_KEPT_IFD0_TAGS: Final[frozenset[int]] = frozenset(
    {0x010E, 0x010F, 0x0110, 0x011A, 0x011B, 0x0128, 0x0131, 0x0132, 0x013B, 0x8298}
)
#: Exif sub-IFD tags written back: exposure, dates and time zones, lens and flash settings,
#: colour space (no maker notes, no serial numbers, no unknown blobs).
_KEPT_EXIF_IFD_TAGS: Final[frozenset[int]] = frozenset(
    {0x829A, 0x829D, 0x8822, 0x8827, 0x8830, 0x8832, 0x9000, 0x9003, 0x9004}
    | {0x9010, 0x9011, 0x9012, 0x9201, 0x9202, 0x9203, 0x9204, 0x9205, 0x9206, 0x9207}
    | {0x9208, 0x9209, 0x920A, 0x9290, 0x9291, 0x9292, 0xA001, 0xA402, 0xA403, 0xA404}
    | {0xA405, 0xA406, 0xA407, 0xA408, 0xA409, 0xA40A, 0xA432, 0xA433, 0xA434}
)
#: A kept tag whose value is longer than this (bytes or text) is dropped: no image fits.
_MAX_KEPT_VALUE_BYTES: Final = 256

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
        format: Pillow's name of the source format: JPEG, MPO, PNG, WEBP, GIF, TIFF, BMP, AVIF
            or HEIF.
        icc_profile: The source's ICC profile when it fits the pixels (RGB or gray), else None.
        exif: The source's raw EXIF block; written (filtered) only with ``keep_metadata``.
        durations_ms: Display time of each frame of an animation; empty for stills and pages.
        loop: Animation loop count (0: forever); None when the source has none.
        lossless: The source was lossless WebP, so the output is too (a lossless format
            written as WebP is written lossless as well).
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


def is_opaque(frame: np.ndarray) -> bool:
    """Whether a frame shows the same whatever lies behind it: no alpha, or alpha all full."""
    if frame.ndim != 3 or frame.shape[2] == color_channel_count(frame):
        return True
    alpha = frame[..., color_channel_count(frame)]
    return bool((alpha == np.iinfo(frame.dtype).max).all())


def detector_views(frame: np.ndarray) -> list[np.ndarray]:
    """The RGB images a face must be looked for in, for one frame: what viewers may show.

    An opaque frame is one view (``to_detector_rgb``). A frame with transparency is shown
    composited over whatever lies behind it, and a face may live in the alpha channel alone
    (dark ink on a light page, or light ink on a dark one): it is looked for in its colour
    channels as stored, composited over black and composited over white.
    """
    if is_opaque(frame):
        return [to_detector_rgb(frame)]
    channels = color_channel_count(frame)
    alpha = frame[..., channels]
    full = np.iinfo(frame.dtype).max
    colour = to_detector_rgb(frame).astype(np.float32)
    weight = (alpha.astype(np.float32) / full)[..., np.newaxis]
    over_black = colour * weight
    over_white = over_black + 255.0 * (1.0 - weight)
    return [
        to_detector_rgb(frame),
        np.ascontiguousarray(np.rint(over_black), dtype=np.uint8),
        np.ascontiguousarray(np.rint(over_white), dtype=np.uint8),
    ]


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
        UnsupportedImageError: A layout this module cannot carry faithfully (float pixels,
            16-bit colour animations, 16-bit colour mixed with other TIFF pages...).
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
    image: DecodedImage,
    *,
    settings: OutputSettings,
    source: str = "<bytes>",
    format: str | None = None,
) -> bytes:
    """Encode ``image`` in its source format (or ``format``), with its frames' layout and depth.

    Metadata is stripped unless ``settings.keep_metadata``: then the source EXIF is written
    without GPS, orientation, maker notes, thumbnails or XMP. The ICC profile is kept wherever
    the format holds one (not in GIF or BMP).

    Another format than the source's gets the same pixels or a refusal: gray becomes RGB where
    the format has no gray (WebP), and nothing else is converted. Frames that the format cannot
    hold (several frames into JPEG or BMP, an animation into TIFF pages, pages into an
    animation, 16-bit pixels into an 8-bit format, alpha into JPEG, partial alpha into GIF)
    are refused.

    Args:
        image: The frames to write and the source's metadata.
        settings: Output quality and metadata policy.
        source: The file's name or URL, for error messages.
        format: Pillow's name of the format to write (``"PNG"``, ``"JPEG"``...; any case);
            None writes the source's format.

    Returns:
        The encoded file.

    Raises:
        UnsupportedImageError: The format cannot hold these frames faithfully.
        ImageEncodeError: The encoder failed.
    """
    target = image.format if format is None else format.strip().upper()
    encoder = _ENCODERS.get(target)
    if encoder is None:
        raise UnsupportedImageError(f"cannot write {target} images", source=source)
    try:
        image = _converted(image, target)
        _check_writable(image)
        exif = _output_exif(image.exif, source) if settings.keep_metadata else None
        return encoder(image, settings, exif)
    except _UnsupportedLayoutError as exc:
        raise UnsupportedImageError(str(exc), source=source) from exc
    except Exception as exc:  # any encoder failure is reported as this image's failure
        raise ImageEncodeError(f"cannot encode {target}: {_describe(exc)}", source=source) from exc


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


@dataclass(frozen=True)
class _TiffPage:
    """What one TIFF directory says about its page, read from the bytes, not by a decoder."""

    orientation: int
    width: int
    height: int
    bits_per_sample: int
    samples_per_pixel: int
    photometric: int | None
    extra_samples: tuple[int, ...]


@dataclass(frozen=True)
class _StoredFile:
    """The bytes every decoder is given, and the orientation the container records.

    Attributes:
        data: The file with every orientation a decoder could apply by itself taken out (TIFF
            Orientation tags set to 1 and XMP orientation unreadable, PNG ``eXIf`` chunks
            removed), so that every decoder gives the stored pixels.
        png_exif: The payload of a PNG's first ``eXIf`` chunk.
        tiff_pages: A TIFF's directories, one per page, in page order.
    """

    data: bytes
    png_exif: bytes | None = None
    tiff_pages: tuple[_TiffPage, ...] = ()


def _decode(data: bytes, source: str, max_pixels: int) -> DecodedImage:
    stored = _stored_file(data)
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
        exif = stored.png_exif if fmt == "PNG" else _source_exif(im)
        loop = im.info.get("loop")
        progressive = bool(im.info.get("progressive"))
        subsampling = _jpeg_subsampling(im) if fmt in ("JPEG", "MPO") else None
        durations: tuple[int, ...] = ()
        if fmt == "TIFF" and _is_high_bit_tiff(stored.tiff_pages):
            frames = _high_bit_tiff_frames(im, stored, max_pixels, source)
        elif fmt == "PNG" and _is_high_bit_png(stored.data):
            frames = _high_bit_png_frames(im, stored, n_frames, source)
        elif n_frames > 1 and fmt in _ANIMATION_FORMATS:
            frames, durations = _animation_frames(im, stored, source)
        else:
            frames = _page_frames(im, stored, max_pixels, source)
    return DecodedImage(
        frames=frames,
        format=fmt,
        icc_profile=_matching_icc(icc, frames[0]),
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


def _source_exif(im: Image.Image) -> bytes | None:
    raw = im.info.get("exif")
    return bytes(raw) if isinstance(raw, bytes) and raw else None


# --- orientation: the one rule --------------------------------------------------------------


def _display_orientation(im: Image.Image, stored: _StoredFile, page: int, source: str) -> int:
    """The orientation a browser applies to the stored pixels of ``page``: the one rule.

    * JPEG, MPO, WebP: the Orientation tag of the frame's EXIF block (Pillow keeps the first
      APP1 Exif segment of each JPEG frame, and WebP's EXIF chunk).
    * PNG: the Orientation tag of the first ``eXIf`` chunk.
    * TIFF: the Orientation tag of the page's own directory.
    * AVIF: the container's ``irot``/``imir`` transforms: Pillow's plugin writes them into the
      EXIF block in place of the block's own tag, and leaves the pixels as stored.
    * HEIF: 1. libheif has applied ``irot``/``imir`` while decoding; the EXIF tag (which
      pillow_heif resets to 1) is never applied on top.
    * GIF, BMP: 1; they have no orientation.

    XMP orientation is never read. Every decoder path calls this, once per frame (an animation
    once for all its frames), on pixels that no decoder has turned.

    Args:
        im: The open image, sought to ``page`` (its ``info`` is that frame's).
        stored: The bytes the decoders were given and what the container records.
        page: Index of the page or frame.
        source: The file's name, for the warnings.

    Returns:
        An EXIF orientation, 1 to 8; 1 (with a warning) when the value cannot be read or is not
        one of them.
    """
    fmt = im.format
    value: Any
    if fmt == "TIFF":
        value = stored.tiff_pages[page].orientation
    elif fmt == "PNG":
        value = _exif_orientation(stored.png_exif, source)
    elif fmt in ("JPEG", "MPO", "WEBP", "AVIF"):
        value = _exif_orientation(_source_exif(im), source)
    else:
        return 1
    if not isinstance(value, int) or not 1 <= value <= 8:
        logger.warning("%s: invalid EXIF orientation %r, assuming upright", source, value)
        return 1
    return value


def _exif_orientation(raw: bytes | None, source: str) -> Any:
    """The Orientation tag of a raw EXIF block (1 when there is none), as stored."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(_TAG_ORIENTATION, 1)
    except Exception as exc:  # a corrupt EXIF block must not cost the pixels
        logger.warning("%s: unreadable EXIF, assuming upright: %s", source, _describe(exc))
        return 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    fix = _ORIENTATION_FIXES.get(orientation)
    return np.ascontiguousarray(pixels if fix is None else fix(pixels))


def _stored_file(data: bytes) -> _StoredFile:
    """The file as decoders get it: without the orientation they would apply by themselves."""
    if data[:4] in _TIFF_PREFIXES:
        neutral, pages = _tiff_without_orientation(data)
        return _StoredFile(neutral, tiff_pages=pages)
    if sniff_image_format(data[:SNIFF_BYTES]) == "PNG":
        neutral, exif = _png_without_exif(data)
        return _StoredFile(neutral, png_exif=exif)
    return _StoredFile(data)


def _png_without_exif(data: bytes) -> tuple[bytes, bytes | None]:
    """A PNG without its ``eXIf`` chunks, and the first one's payload (None when it has none).

    Neither Pillow nor OpenCV then has an orientation to apply; the rule reads the payload.
    """
    position = len(_PNG_SIGNATURE)
    kept: list[bytes] = []
    kept_from = 0
    exif: bytes | None = None
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        tag = data[position + 4 : position + 8]
        end = position + 12 + length
        if tag == b"eXIf" and end <= len(data):
            if exif is None:
                exif = data[position + 8 : end - 4]
            kept.append(data[kept_from:position])
            kept_from = end
        if tag == b"IEND":
            break
        position = end
    if kept_from == 0:
        return data, None
    kept.append(data[kept_from:])
    return b"".join(kept), exif


#: TIFF headers Pillow accepts (it also reads two invalid byte orders).
_TIFF_PREFIXES: Final[tuple[bytes, ...]] = (
    b"MM\x00\x2a",
    b"II\x2a\x00",
    b"MM\x2a\x00",
    b"II\x00\x2a",
    b"MM\x00\x2b",
    b"II\x2b\x00",
)
_TIFF_TYPE_SIZES: Final[dict[int, int]] = {
    1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8,
    17: 8, 18: 8,
}  # fmt: skip
#: struct codes of the unsigned integer TIFF field types.
_TIFF_UINT_CODES: Final[dict[int, str]] = {1: "B", 3: "H", 4: "L", 13: "L", 16: "Q", 18: "Q"}
#: Tags read for each page: size, bits and samples, photometric, orientation, extra samples.
_TIFF_PAGE_TAGS: Final[frozenset[int]] = frozenset({256, 257, 258, 262, 274, 277, 338})
_TIFF_TAG_XMP: Final = 700
_TIFF_MAX_PAGES: Final = 65_536
#: Directory entries read in all, at most: directories may overlap, so a small file could
#: otherwise make the walk read billions.
_TIFF_MAX_ENTRIES: Final = 1 << 20
_XMP_ORIENTATION: Final = b"tiff:Orientation"
_XMP_NO_ORIENTATION: Final = b"tiff:0rientation"


def _tiff_without_orientation(data: bytes) -> tuple[bytes, tuple[_TiffPage, ...]]:
    """A copy of a TIFF whose pages all say orientation 1, and each page's own directory.

    Pillow's TIFF plugin turns pages while loading them (by the Orientation tag or, without
    one, by XMP's), and OpenCV's TIFF decoder turns them whatever its flags: given this copy,
    both return the stored pixels. XMP ``tiff:Orientation`` is respelled so that nothing reads
    it. Directories are walked as Pillow walks them (its byte order and BigTIFF test).

    Raises:
        ValueError: The directories form a loop, lie outside the file or hold too many entries.
        struct.error: A directory lies outside the file.
        _UnsupportedLayoutError: An Orientation tag that is not an unsigned integer.
    """
    endian = ">" if data[:2] == b"MM" else "<"
    big = data[2] == 43
    pointer, inline, entry_size, head = ("Q", 8, 20, 8) if big else ("L", 4, 12, 2)

    def read(code: str, at: int) -> tuple[int, ...]:
        return struct.unpack_from(endian + code, data, at)

    patched = bytearray(data)
    pages: list[_TiffPage] = []
    seen: set[int] = set()
    entries = 0
    (offset,) = read(pointer, 8 if big else 4)
    while offset:
        if offset in seen or len(pages) >= _TIFF_MAX_PAGES:
            raise ValueError("TIFF directories form a loop")
        seen.add(offset)
        (count,) = read("Q" if big else "H", offset)
        first = offset + head
        entries += count
        if first + count * entry_size + inline > len(data) or entries > _TIFF_MAX_ENTRIES:
            raise ValueError("TIFF directory lies outside the file or is too long")
        tags: dict[int, tuple[int, ...]] = {}
        for at in range(first, first + count * entry_size, entry_size):
            tag, kind = read("HH", at)
            (number,) = read(pointer, at + 4)
            size = _TIFF_TYPE_SIZES.get(kind, 1) * number
            where = at + 4 + inline if size <= inline else read(pointer, at + 4 + inline)[0]
            code = _TIFF_UINT_CODES.get(kind)
            if tag == _TAG_ORIENTATION:
                if code is None or number < 1:
                    raise _UnsupportedLayoutError("TIFF orientation tag is not an integer")
                tags[tag] = read(code, where)
                struct.pack_into(endian + code, patched, where, 1)
            elif tag == _TIFF_TAG_XMP:
                xmp = bytes(patched[where : where + size])
                patched[where : where + size] = xmp.replace(_XMP_ORIENTATION, _XMP_NO_ORIENTATION)
            elif tag in _TIFF_PAGE_TAGS and code is not None and 1 <= number <= 16:
                tags[tag] = read(f"{number}{code}", where)
        pages.append(
            _TiffPage(
                orientation=tags.get(_TAG_ORIENTATION, (1,))[0],
                width=tags.get(256, (0,))[0],
                height=tags.get(257, (0,))[0],
                bits_per_sample=max(tags.get(258, (1,))),
                samples_per_pixel=tags.get(277, (1,))[0],
                photometric=tags[262][0] if 262 in tags else None,
                extra_samples=tags.get(338, ()),
            )
        )
        (offset,) = read(pointer, first + count * entry_size)
    return bytes(patched), tuple(pages)


# --- pixels of each frame -------------------------------------------------------------------


def _page_frames(
    im: Image.Image, stored: _StoredFile, max_pixels: int, source: str
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
        frames.append(_upright(pixels, _display_orientation(page, stored, index, source)))
    return tuple(frames)


def _animation_frames(
    im: Image.Image, stored: _StoredFile, source: str
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
            raise _UnsupportedLayoutError(
                f"APNG frames blended over a {frame.mode} colour key cannot be composited"
            )
        canvases.append(_still_pixels(frame) if keep_mode else np.asarray(frame.convert("RGBA")))
        if index == 0:
            orientation = _display_orientation(frame, stored, 0, source)
        durations.append(round(float(frame.info.get("duration") or 0)))
    if not keep_mode and all(bool(canvas[..., 3].min() == 255) for canvas in canvases):
        canvases = [canvas[..., :3] for canvas in canvases]
    return tuple(_upright(canvas, orientation) for canvas in canvases), tuple(durations)


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
    return _standard_icc(icc)


#: ICC tags (v2 and v4) that describe colour; any other tag (a private one can hold any bytes,
#: a face preview among them) is left out of the profile written back.
_ICC_TAGS: Final[frozenset[bytes]] = frozenset(
    tag.encode("ascii")
    for tag in [
        "A2B0",
        "A2B1",
        "A2B2",
        "B2A0",
        "B2A1",
        "B2A2",
        "bXYZ",
        "bTRC",
        "calt",
        "chad",
        "chrm",
        "cicp",
        "cprt",
        "desc",
        "dmnd",
        "dmdd",
        "gamt",
        "kTRC",
        "gXYZ",
        "gTRC",
        "lumi",
        "meas",
        "bkpt",
        "wtpt",
        "ncl2",
        "rXYZ",
        "rTRC",
        "tech",
        "vued",
        "view",
        "mluc",
        "clro",
        "clrt",
        "clot",
        "ciis",
        "pseq",
        "psid",
        "rig0",
        "rig2",
        "targ",
        "mmod",
        "dscm",
        "vcgt",
        "arts",
    ]
)
#: Profiles above this are not written back (the corpus's largest real one is 512 KB).
_MAX_ICC_BYTES: Final = 1 << 20


def _standard_icc(icc: bytes) -> bytes | None:
    """``icc`` rebuilt from its colour tags only, or None when it cannot be read as a profile."""
    if len(icc) > _MAX_ICC_BYTES or len(icc) < 132:
        return None
    count = int.from_bytes(icc[128:132], "big")
    if count > 256 or 132 + 12 * count > len(icc):
        return None
    kept: list[tuple[bytes, bytes]] = []
    for index in range(count):
        entry = icc[132 + 12 * index : 144 + 12 * index]
        tag = entry[:4]
        offset, size = int.from_bytes(entry[4:8], "big"), int.from_bytes(entry[8:12], "big")
        if offset + size > len(icc):
            return None
        if tag in _ICC_TAGS:
            kept.append((tag, icc[offset : offset + size]))
    if len(kept) == count:
        return icc  # nothing but colour: written back as it came
    logger.debug("ICC profile: %d non-colour tag(s) left out", count - len(kept))
    table_end = 132 + 12 * len(kept)
    data = bytearray()
    entries = bytearray()
    placed: dict[bytes, int] = {}  # tags sharing one payload (r/g/bTRC) keep sharing it
    for tag, payload in kept:
        start = placed.get(payload)
        if start is None:
            start = placed[payload] = table_end + len(data)
            data += payload + b"\0" * (-len(payload) % 4)
        entries += tag + start.to_bytes(4, "big") + len(payload).to_bytes(4, "big")
    header = bytearray(icc[:128])
    total = table_end + len(data)
    header[0:4] = total.to_bytes(4, "big")
    header[84:100] = bytes(16)  # the profile ID (an MD5 of the old bytes) no longer applies
    return bytes(header) + len(kept).to_bytes(4, "big") + bytes(entries) + bytes(data)


# 16-bit colour: Pillow reduces 16-bit RGB(A) to 8 bits, so OpenCV decodes those pixels (from
# the same neutralised bytes: OpenCV's TIFF decoder would apply the orientation tag itself).


def _png_header(data: bytes) -> tuple[int, int] | None:
    """Bit depth and colour type from a PNG's IHDR, or None when it is not a plain PNG."""
    if len(data) < 29 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _is_high_bit_png(data: bytes) -> bool:
    header = _png_header(data)
    return header is not None and header[0] == 16 and header[1] in (2, 4, 6)


def _is_high_bit_tiff(pages: Sequence[_TiffPage]) -> bool:
    """True when every page holds more than 8 bits of colour; mixed files are refused."""
    deep = [page.bits_per_sample > 8 and page.samples_per_pixel >= 3 for page in pages]
    if any(deep) and not all(deep):
        raise _UnsupportedLayoutError("TIFF pages mix 16-bit colour with other layouts")
    return bool(deep) and all(deep)


def _high_bit_png_frames(
    im: Image.Image, stored: _StoredFile, n_frames: int, source: str
) -> tuple[np.ndarray, ...]:
    if n_frames > 1:
        raise _UnsupportedLayoutError("16-bit colour animated PNG is not supported")
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
        pixels = _add_key_alpha(pixels, key)
    return (_upright(pixels, _display_orientation(im, stored, 0, source)),)


def _high_bit_tiff_frames(
    im: Image.Image, stored: _StoredFile, max_pixels: int, source: str
) -> tuple[np.ndarray, ...]:
    pages = stored.tiff_pages
    if sum(page.width * page.height for page in pages) > max_pixels:
        raise ImageTooLargeError(
            f"pages hold more than the limit of {max_pixels} pixels", source=source
        )
    for page in pages:
        if (page.bits_per_sample, page.photometric) != (16, 2) or page.samples_per_pixel > 4:
            raise _UnsupportedLayoutError(
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
        frames.append(_upright(rgb, _display_orientation(im, stored, index, source)))
    return tuple(frames)


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
    "GIF": _ALL_8BIT,
    # Nothing reads back 16-bit gray+alpha TIFF (Pillow cannot identify it, OpenCV drops alpha).
    "TIFF": _ALL_8BIT | frozenset({(_U16, 1), (_U16, 3), (_U16, 4)}),
    "BMP": frozenset({(_U8, 1), (_U8, 3), (_U8, 4)}),
    # Monochrome AVIF/HEIF decode as gray and are written back as such; pillow-heif decodes
    # monochrome above 8 bits as 16-bit gray and writes it as 10-bit.
    "AVIF": _COLOUR_8BIT | {(_U8, 1)},
    "HEIF": _COLOUR_8BIT | {(_U8, 1), (_U16, 1)},
}


def _converted(image: DecodedImage, target: str) -> DecodedImage:
    """``image`` to be written as ``target``: as it is for its own format; for another one, gray
    expanded to RGB where ``target`` has no gray, and anything else it cannot hold refused."""
    if target == image.format:
        return image
    count = len(image.frames)
    if count > 1:
        if target in _SINGLE_FRAME_FORMATS:
            raise _UnsupportedLayoutError(f"{target} holds one frame, not {count}")
        if image.is_animation and target not in _ANIMATION_FORMATS:
            raise _UnsupportedLayoutError(f"{target} cannot hold an animation")
        if not image.is_animation and target not in _PAGE_FORMATS:
            raise _UnsupportedLayoutError(f"{target} cannot hold {count} separate pages")
    frames = tuple(_in_layout_of(frame, target) for frame in image.frames)
    if target == "GIF" and any(_has_partial_alpha(frame) for frame in frames):
        raise _UnsupportedLayoutError("GIF cannot hold partial transparency")
    return dataclasses.replace(
        image,
        frames=frames,
        format=target,
        icc_profile=_matching_icc(image.icc_profile, frames[0]),
        lossless=image.lossless if image.format == "WEBP" else image.format in _LOSSLESS_FORMATS,
        progressive=image.progressive and target == "JPEG",
        jpeg_subsampling=image.jpeg_subsampling if target in ("JPEG", "MPO") else None,
    )


def _in_layout_of(frame: np.ndarray, target: str) -> np.ndarray:
    """``frame`` as it is when ``target`` holds its layout, 8-bit gray(+alpha) as RGB(A) when
    ``target`` holds only colour; anything else is refused."""
    allowed = _WRITABLE_LAYOUTS[target]
    channels = _channels(frame)
    if (frame.dtype, channels) in allowed:
        return frame
    if frame.dtype == _U8 and channels in (1, 2) and (_U8, channels + 2) in allowed:
        gray = frame.reshape(*frame.shape[:2], channels)
        return np.concatenate([np.repeat(gray[..., :1], 3, axis=2), gray[..., 1:]], axis=2)
    raise _UnsupportedLayoutError(f"{target} cannot hold {channels}-channel {frame.dtype} pixels")


def _has_partial_alpha(frame: np.ndarray) -> bool:
    if _channels(frame) not in (2, 4):
        return False
    alpha = frame[..., -1]
    opaque = np.iinfo(frame.dtype).max
    return bool(np.any((alpha > 0) & (alpha < opaque)))


def _check_writable(image: DecodedImage) -> None:
    allowed = _WRITABLE_LAYOUTS[image.format]
    count = len(image.frames)
    if count > 1 and image.format in _SINGLE_FRAME_FORMATS:
        raise _UnsupportedLayoutError(f"{image.format} holds one frame, not {count}")
    for frame in image.frames:
        layout = (frame.dtype, _channels(frame))
        if layout not in allowed:
            raise _UnsupportedLayoutError(
                f"{image.format} cannot hold {_channels(frame)}-channel {frame.dtype} pixels"
            )
    if len({frame.dtype for frame in image.frames}) > 1:
        raise _UnsupportedLayoutError("frames mix 8-bit and 16-bit pixels")
    same_canvas = image.is_animation or (count > 1 and image.format in _ANIMATION_FORMATS)
    if same_canvas and len({frame.shape for frame in image.frames}) > 1:
        raise _UnsupportedLayoutError("animation frames differ in size or layout")


def _output_exif(raw: bytes | None, source: str) -> bytes | None:
    """The source EXIF's allow-listed tags: never location, orientation, previews, maker
    notes, vendor blobs or XMP."""
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
        if tag in _KEPT_IFD0_TAGS and _small_value(value):
            kept[tag] = value
    exif_ifd = {
        tag: value
        for tag, value in original.get_ifd(_TAG_EXIF_IFD).items()
        if tag in _KEPT_EXIF_IFD_TAGS and _small_value(value)
    }
    if exif_ifd:
        kept[_TAG_EXIF_IFD] = exif_ifd
    return kept.tobytes() if len(kept) else None


def _small_value(value: object) -> bool:
    """Whether an EXIF value is too small to carry an image (a number, a short text)."""
    if isinstance(value, bytes | str):
        return len(value) <= _MAX_KEPT_VALUE_BYTES
    if isinstance(value, tuple):
        return len(value) <= 16 and all(_small_value(item) for item in value)
    return True


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
        durations = list(image.durations_ms)
        options["duration"] = durations if len(durations) > 1 else durations[0]
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
        return _encode_png16(image, exif)
    options = _metadata_options(image, exif) | _animation_options(image)
    return _save(_pil_frames(image), "PNG", **options)


def _encode_webp(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | _animation_options(image)
    # exact keeps the colour under transparent pixels, so lossless stays bit-exact.
    options |= {"lossless": image.lossless, "quality": settings.jpeg_quality, "exact": True}
    return _save(_pil_frames(image), "WEBP", **options)


def _encode_gif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # GIF has no quality setting and no EXIF
    pixels = image.frames
    if len(pixels) > 1:
        pixels = tuple(_in_layout_of(frame, "WEBP") for frame in pixels)  # canvases are RGB(A)
    # An animation with alpha: every frame keeps index 255 transparent, each canvas replaces
    # the one before (a hidden pixel must not show the last frame), and entry 255 gets a colour
    # no visible pixel has, so Pillow's delta against the cleared canvas never crops one away.
    keyed = len(pixels) > 1 and _channels(pixels[0]) == 4
    frames = [_gif_palette_frame(frame, keyed=keyed) for frame in pixels]
    options = _animation_options(image)
    options["optimize"] = False  # Pillow's palette optimisation may reorder our transparent index
    if keyed:
        _give_transparent_entry_an_unused_colour(frames)
        options["disposal"] = 2
    return _save(frames, "GIF", **options)


def _gif_palette_frame(frame: np.ndarray, *, keyed: bool = False) -> Image.Image:
    """One frame as a GIF palette image; alpha below 128 becomes the transparent index.

    A gray still is written with the gray ramp (so it decodes as gray again), its transparent
    index a gray level no visible pixel uses. Colour keeps its own colours when there are at
    most 256 (255 beside the transparent index 255, which ``keyed`` always reserves), else it
    is median-cut quantised.
    """
    channels = _channels(frame)
    hidden = frame[..., -1] < 128 if channels in (2, 4) else np.zeros(frame.shape[:2], bool)
    if channels <= 2:
        gray = frame if channels == 1 else frame[..., 0]
        unused = np.setdiff1d(np.arange(256), gray[~hidden])
        if not hidden.any() or unused.size:
            return _gray_gif_frame(gray, hidden, int(unused[-1]) if hidden.any() else None)
        frame = np.concatenate([np.repeat(frame[..., :1], 3, axis=2), frame[..., 1:]], axis=2)
    transparent = keyed or bool(hidden.any())
    room = 255 if transparent else 256
    rgb = frame[..., :3].astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed[~hidden], return_inverse=True)
    indices = np.zeros(frame.shape[:2], np.uint8)
    if len(colours) <= room:
        indices[~hidden] = inverse.reshape(-1)
        palette = np.stack([colours >> 16, (colours >> 8) & 0xFF, colours & 0xFF], axis=1)
    else:
        rgb_image = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
        paletted = rgb_image.quantize(colors=room, method=Image.Quantize.MEDIANCUT)
        indices = np.asarray(paletted).copy()
        palette = np.asarray((paletted.getpalette() or [])[: 3 * room]).reshape(-1, 3)
    indices[hidden] = 255
    result = Image.frombytes("P", (frame.shape[1], frame.shape[0]), indices.tobytes())
    flat = palette.astype(np.uint8).reshape(-1).tobytes()
    result.putpalette(flat + bytes(768 - len(flat)))
    if transparent:
        result.info["transparency"] = 255
    return result


def _give_transparent_entry_an_unused_colour(frames: Sequence[Image.Image]) -> None:
    """Set palette entry 255 of every frame to one colour that no other entry of any has."""
    used: set[int] = set()
    palettes = []
    for frame in frames:
        palette = np.frombuffer(bytes(frame.getpalette() or []), np.uint8).reshape(-1, 3)
        palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        palettes.append(palette)
        entries = palette[:255].astype(np.uint32)
        used.update(((entries[:, 0] << 16) | (entries[:, 1] << 8) | entries[:, 2]).tolist())
    free = next(colour for colour in range(len(used) + 1) if colour not in used)
    for frame, palette in zip(frames, palettes, strict=True):
        palette[255] = (free >> 16, (free >> 8) & 0xFF, free & 0xFF)
        frame.putpalette(palette.tobytes())


def _gray_gif_frame(gray: np.ndarray, hidden: np.ndarray, key: int | None) -> Image.Image:
    pixels = np.array(gray, dtype=np.uint8)
    if key is not None:
        pixels[hidden] = key
    result = Image.fromarray(pixels)
    if key is not None:
        result.info["transparency"] = key
    return result


def _encode_tiff(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # TIFF is written lossless; its tags are rebuilt, EXIF is not carried
    if image.frames[0].dtype == np.uint16:
        return _encode_tiff16(image.frames, image.icc_profile)
    options = _metadata_options(image, None) | {"compression": "tiff_adobe_deflate"}
    if len(image.frames) > 1:
        options["save_all"] = True
    return _save(_pil_frames(image), "TIFF", **options)


def _encode_bmp(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # BMP is uncompressed and holds no EXIF
    frame = image.frames[0]
    if _channels(frame) == 4:
        return _bmp_rgba(frame)
    return _save(_pil_frames(image), "BMP")


def _bmp_rgba(frame: np.ndarray) -> bytes:
    """32-bit BMP with an alpha mask (BITMAPV4HEADER, bit fields): Pillow writes RGBA as
    32-bit BMP without a mask, which reads back without alpha."""
    height, width = frame.shape[:2]
    pixels = np.ascontiguousarray(frame[::-1, :, [2, 1, 0, 3]]).tobytes()  # bottom-up BGRA
    offset = 14 + 108
    info = struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    masks = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    colour_space = b"BGRs" + bytes(36 + 12)  # LCS_sRGB; no end points, no gamma
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + masks + colour_space + pixels


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
    "BMP": _encode_bmp,
    "AVIF": _encode_avif,
    "HEIF": _encode_heif,
}


# 16-bit PNG: Pillow cannot write 16-bit colour, gray+alpha or 16-bit APNG, and OpenCV cannot
# write gray+alpha, so this writes the few chunks itself (every 16-bit layout, ICC and EXIF
# kept; several frames as an APNG of full canvases, each replacing the one before).


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
    rows = np.ascontiguousarray(frame, dtype=">u2").reshape(height, width * _channels(frame))
    return zlib.compress(_png_up_filtered(rows.view(np.uint8)), 6)


def _apng_delay(duration_ms: int) -> tuple[int, int]:
    """An APNG frame delay (numerator, denominator) for a display time in milliseconds."""
    if duration_ms <= 0xFFFF:
        return max(duration_ms, 0), 1000
    return min(round(duration_ms / 10), 0xFFFF), 100


def _encode_png16(image: DecodedImage, exif: bytes | None) -> bytes:
    frames = image.frames
    animated = len(frames) > 1
    height, width = frames[0].shape[:2]
    colour_type = _PNG_COLOUR_TYPES[_channels(frames[0])]
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
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER)))
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
    return _PNG_SIGNATURE + b"".join(chunks)


def _gray16_keyed(frames: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], int]:
    """16-bit gray + alpha frames as gray frames and a tRNS key: hidden pixels take a gray
    level that no visible pixel of any frame has.

    Raises:
        _UnsupportedLayoutError: Colour frames, partial alpha or no free gray level.
    """
    if _channels(frames[0]) != 2:
        raise _UnsupportedLayoutError("16-bit colour animated PNG is not supported")
    if any(_has_partial_alpha(frame) for frame in frames):
        raise _UnsupportedLayoutError("16-bit animated PNG cannot hold partial transparency")
    used = np.zeros(0x10000, bool)
    for frame in frames:
        used[frame[..., 0][frame[..., 1] != 0]] = True
    free = np.flatnonzero(~used)
    if free.size == 0:
        raise _UnsupportedLayoutError("16-bit animated PNG has no free gray level for a key")
    key = int(free[-1])
    gray = tuple(
        np.where(frame[..., 1] == 0, key, frame[..., 0]).astype(np.uint16) for frame in frames
    )
    return gray, key


# 16-bit TIFF: Pillow cannot write 16-bit colour and OpenCV drops the ICC profile and leaves
# alpha unlabelled, so this writes little-endian IFDs (one per page), each page one deflated
# strip.

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


def _encode_tiff16(frames: Sequence[np.ndarray], icc_profile: bytes | None) -> bytes:
    out = bytearray(b"II*\x00" + struct.pack("<I", 0))
    next_pointer_at = 4  # where the offset of the next IFD is written
    for frame in frames:
        strip = zlib.compress(_tiff_predicted(frame), 6)
        strip_offset = len(out)
        out += strip + b"\x00" * (len(strip) & 1)
        entries = _tiff_entries(frame, strip, icc_profile)
        ifd_offset = len(out)
        struct.pack_into("<I", out, next_pointer_at, ifd_offset)
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
        next_pointer_at = extra_offset - 4
        out += b"".join(ifd) + b"".join(extra)
    return bytes(out)
