"""Which pixel layouts each output format holds, and frames made ready for another format.

Another format than the source's gets the same pixels or a refusal: gray becomes RGB where the
format has no gray (WebP), and nothing else is converted. Frames that the format cannot hold
(several frames into JPEG or BMP, an animation into TIFF pages, pages into an animation, 16-bit
pixels into an 8-bit format, alpha into JPEG, partial alpha into GIF) are refused with
``UnsupportedLayoutError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import numpy as np

from anon_tasks.imaging.decoded import (
    ANIMATION_FORMATS,
    LOSSLESS_FORMATS,
    PAGE_FORMATS,
    SINGLE_FRAME_FORMATS,
    DecodedImage,
    UnsupportedLayoutError,
    channel_count,
)
from anon_tasks.imaging.metadata import matching_icc

__all__ = ["check_writable", "converted", "has_partial_alpha", "in_layout_of"]

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


def converted(image: DecodedImage, target: str) -> DecodedImage:
    """``image`` to be written as ``target``: as it is for its own format; for another one, gray
    expanded to RGB where ``target`` has no gray, and anything else it cannot hold refused.

    Raises:
        UnsupportedLayoutError: ``target`` cannot hold these frames.
    """
    if target == image.format:
        return image
    count = len(image.frames)
    if count > 1:
        if target in SINGLE_FRAME_FORMATS:
            raise UnsupportedLayoutError(f"{target} holds one frame, not {count}")
        if image.is_animation and target not in ANIMATION_FORMATS:
            raise UnsupportedLayoutError(f"{target} cannot hold an animation")
        if not image.is_animation and target not in PAGE_FORMATS:
            raise UnsupportedLayoutError(f"{target} cannot hold {count} separate pages")
    frames = tuple(in_layout_of(frame, target) for frame in image.frames)
    if target == "GIF" and any(has_partial_alpha(frame) for frame in frames):
        raise UnsupportedLayoutError("GIF cannot hold partial transparency")
    return dataclasses.replace(
        image,
        frames=frames,
        format=target,
        icc_profile=matching_icc(image.icc_profile, frames[0]),
        lossless=image.lossless if image.format == "WEBP" else image.format in LOSSLESS_FORMATS,
        progressive=image.progressive and target == "JPEG",
        jpeg_subsampling=image.jpeg_subsampling if target in ("JPEG", "MPO") else None,
    )


def in_layout_of(frame: np.ndarray, target: str) -> np.ndarray:
    """``frame`` as it is when ``target`` holds its layout, 8-bit gray(+alpha) as RGB(A) when
    ``target`` holds only colour; anything else is refused.

    Raises:
        UnsupportedLayoutError: ``target`` holds neither layout.
    """
    allowed = _WRITABLE_LAYOUTS[target]
    channels = channel_count(frame)
    if (frame.dtype, channels) in allowed:
        return frame
    if frame.dtype == _U8 and channels in (1, 2) and (_U8, channels + 2) in allowed:
        gray = frame.reshape(*frame.shape[:2], channels)
        return np.concatenate([np.repeat(gray[..., :1], 3, axis=2), gray[..., 1:]], axis=2)
    raise UnsupportedLayoutError(f"{target} cannot hold {channels}-channel {frame.dtype} pixels")


def has_partial_alpha(frame: np.ndarray) -> bool:
    """Whether a frame has alpha strictly between transparent and opaque anywhere."""
    if channel_count(frame) not in (2, 4):
        return False
    alpha = frame[..., -1]
    opaque = np.iinfo(frame.dtype).max
    return bool(np.any((alpha > 0) & (alpha < opaque)))


def check_writable(image: DecodedImage) -> None:
    """Refuse frames that ``image.format`` cannot write back as they are.

    Raises:
        UnsupportedLayoutError: A layout the format does not hold, several frames for a
            one-frame format, mixed bit depths, or animation frames of different shapes.
    """
    allowed = _WRITABLE_LAYOUTS[image.format]
    count = len(image.frames)
    if count > 1 and image.format in SINGLE_FRAME_FORMATS:
        raise UnsupportedLayoutError(f"{image.format} holds one frame, not {count}")
    for frame in image.frames:
        layout = (frame.dtype, channel_count(frame))
        if layout not in allowed:
            raise UnsupportedLayoutError(
                f"{image.format} cannot hold {channel_count(frame)}-channel {frame.dtype} pixels"
            )
    if len({frame.dtype for frame in image.frames}) > 1:
        raise UnsupportedLayoutError("frames mix 8-bit and 16-bit pixels")
    same_canvas = image.is_animation or (count > 1 and image.format in ANIMATION_FORMATS)
    if same_canvas and len({frame.shape for frame in image.frames}) > 1:
        raise UnsupportedLayoutError("animation frames differ in size or layout")
