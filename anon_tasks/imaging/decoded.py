"""The decoded-image value: upright frames in one of four layouts, and the helpers over them.

A frame is a numpy array in one of four channel-last layouts:

    HxW      gray            HxWx2  gray + alpha
    HxWx3    RGB (never BGR) HxWx4  RGB + alpha

with dtype ``uint8`` or ``uint16``. A ``DecodedImage`` holds every frame of one file as
read-only views, with what is needed to write the file back; this module also says which
formats are read and written, and how their frames are grouped (animations, pages, stills).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

__all__ = [
    "ANIMATION_FORMATS",
    "LOSSLESS_FORMATS",
    "PAGE_FORMATS",
    "SINGLE_FRAME_FORMATS",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "UnsupportedLayoutError",
    "add_key_alpha",
    "channel_count",
    "check_layout",
    "color_channel_count",
    "detector_views",
    "is_opaque",
    "to_detector_rgb",
    "with_frames",
]

#: Pillow format names this package reads and writes back. MPO is reached through the JPEG
#: opener.
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
#: Multi-frame files of these formats are animations: one canvas, per-frame durations.
ANIMATION_FORMATS: Final[frozenset[str]] = frozenset({"GIF", "WEBP", "PNG", "AVIF"})
#: Multi-frame files of these formats are separate pages (or views), without timing.
PAGE_FORMATS: Final[frozenset[str]] = frozenset({"TIFF", "MPO", "HEIF"})
#: Formats that hold one frame only.
SINGLE_FRAME_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "BMP"})
#: Formats written without loss; a conversion from one of them to WebP is written lossless.
LOSSLESS_FORMATS: Final[frozenset[str]] = frozenset({"PNG", "GIF", "TIFF", "BMP"})


class UnsupportedLayoutError(Exception):
    """Pixels or a format combination that cannot be carried; mapped to UnsupportedImageError."""


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
            check_layout(frame)
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


def check_layout(frame: np.ndarray) -> None:
    """Raise unless ``frame`` is a non-empty array in one of the four layouts, uint8 or uint16.

    Raises:
        TypeError: ``frame`` is not a numpy array.
        ValueError: Another dtype or shape, or no pixels.
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"a frame must be a numpy array, not {type(frame).__name__}")
    if frame.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a frame must be uint8 or uint16, not {frame.dtype}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (2, 3, 4))):
        raise ValueError(f"a frame must be HxW, HxWx2, HxWx3 or HxWx4, not {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"a frame must not be empty, got {frame.shape}")


def channel_count(frame: np.ndarray) -> int:
    """Channels of a frame in one of the four layouts: 1, 2, 3 or 4 (alpha included)."""
    return 1 if frame.ndim == 2 else int(frame.shape[2])


def color_channel_count(frame: np.ndarray) -> int:
    """Return how many leading channels of ``frame`` are colour: 1 (gray, gray+alpha) or 3.

    Raises:
        ValueError: ``frame`` is not one of the four layouts in uint8 or uint16.
    """
    check_layout(frame)
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


def add_key_alpha(pixels: np.ndarray, key: Any) -> np.ndarray:
    """Turn a PNG tRNS colour key into an alpha channel (0 on the key colour, opaque elsewhere).

    Pixels the key does not fit (another channel count, a key of another kind) come back as
    they are.
    """
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


def _read_only_view(frame: np.ndarray) -> np.ndarray:
    view = frame.view()
    view.flags.writeable = False
    return view
