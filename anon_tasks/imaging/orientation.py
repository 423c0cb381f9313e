"""Orientation: the one rule that says how a frame's stored pixels are turned upright.

Orientation is decided by ``display_orientation`` and applied exactly once, by ``upright``, to
the stored pixels, on every decoder path:

* JPEG, MPO, PNG and WebP: the EXIF Orientation tag (JPEG APP1, PNG ``eXIf``, WebP ``EXIF``).
* TIFF: each page's own IFD Orientation tag.
* AVIF and HEIF: the container's ``irot``/``imir`` transforms, never the EXIF tag as well
  (libheif applies them while decoding HEIF; Pillow's AVIF plugin reports them instead of the
  EXIF tag and leaves the pixels stored).
* GIF and BMP have no orientation.

XMP ``tiff:Orientation`` and ImageMagick's PNG text profiles are ignored, as browsers ignore
them. A file whose EXIF cannot be read is taken as orientation 1 and a warning is logged: the
corrupt EXIF in the corpus still holds orientation 1 and its pixels are upright.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from PIL import Image

from anon_tasks.imaging.metadata import source_exif
from anon_tasks.imaging.pillow_guard import describe
from anon_tasks.imaging.stored import TAG_ORIENTATION, StoredFile

__all__ = ["display_orientation", "upright"]

logger = logging.getLogger(__name__)

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


def display_orientation(im: Image.Image, stored: StoredFile, page: int, source: str) -> int:
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
        value = _exif_orientation(source_exif(im), source)
    else:
        return 1
    if not isinstance(value, int) or not 1 <= value <= 8:
        logger.warning("%s: invalid EXIF orientation %r, assuming upright", source, value)
        return 1
    return value


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` turned upright for an EXIF ``orientation`` (1 to 8), C-contiguous."""
    fix = _ORIENTATION_FIXES.get(orientation)
    return np.ascontiguousarray(pixels if fix is None else fix(pixels))


def _exif_orientation(raw: bytes | None, source: str) -> Any:
    """The Orientation tag of a raw EXIF block (1 when there is none), as stored."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(TAG_ORIENTATION, 1)
    except Exception as exc:  # a corrupt EXIF block must not cost the pixels
        logger.warning("%s: unreadable EXIF, assuming upright: %s", source, describe(exc))
        return 1
