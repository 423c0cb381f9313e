"""Which image format a file holds: from its first bytes (the rule) or its name (a hint).

Pure and dependency-free, so listing a dataset can tell images from other files without loading
an image library. Format names are Pillow's (``"JPEG"``, ``"PNG"``...).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final

__all__ = [
    "SNIFF_BYTES",
    "SUFFIX_FORMATS",
    "format_for_name",
    "sniff_image_format",
]

#: How many leading bytes ``sniff_image_format`` needs (an ISO-BMFF ``ftyp`` box with brands).
SNIFF_BYTES: Final = 64

#: File-name extensions (lower case) and the format they name.
SUFFIX_FORMATS: Final[dict[str, str]] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".jif": "JPEG",
    ".mpo": "MPO",
    ".png": "PNG",
    ".apng": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".avif": "AVIF",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".hif": "HEIF",
}

#: Sizes of the DIB headers a BMP file can carry (bytes 14-18): "BM" alone is common text.
_DIB_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)


def format_for_name(name: str) -> str | None:
    """The format a file name's extension names (case-insensitive), or None."""
    return SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())


def _iso_bmff_format(head: bytes) -> str | None:
    """AVIF or HEIF from an ISO-BMFF ``ftyp`` box: its major brand, then compatible brands."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(head[0:4], "big")
    end = min(len(head), box_size if box_size >= 16 else 16)
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, end - 3, 4)]
    if any(brand in _AVIF_BRANDS for brand in brands):
        return "AVIF"
    if any(brand in _HEIF_BRANDS for brand in brands):
        return "HEIF"
    return None


def sniff_image_format(head: bytes) -> str | None:
    """The image format of a file from its first ``SNIFF_BYTES`` bytes, or None.

    Args:
        head: The file's leading bytes (fewer is fine for short files).

    Returns:
        ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"WEBP"``, ``"TIFF"``, ``"BMP"``, ``"AVIF"`` or
        ``"HEIF"``; None when the bytes start no image format this package reads.

    Example:
        >>> sniff_image_format(b"\\x89PNG\\r\\n\\x1a\\n")
        'PNG'
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES:
        return "BMP"
    return _iso_bmff_format(head)
