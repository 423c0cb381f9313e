"""The file as every decoder is given it: without the orientation a decoder would apply itself.

Decoders that would turn pixels on their own (Pillow's TIFF plugin by the Orientation tag or
XMP's, OpenCV by the TIFF tag and PNG ``eXIf``) are handed a copy of the file whose orientation
tags say 1, so they return the stored pixels; what the container records (each TIFF page's
directory, a PNG's ``eXIf`` payload) is read from the bytes here, for the one orientation rule
in ``orientation``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from anon_tasks.core.formats import SNIFF_BYTES, sniff_image_format
from anon_tasks.imaging.decoded import UnsupportedLayoutError

__all__ = ["PNG_SIGNATURE", "TAG_ORIENTATION", "StoredFile", "TiffPage", "stored_file"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: The EXIF and TIFF Orientation tag.
TAG_ORIENTATION: Final = 0x0112

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


@dataclass(frozen=True)
class TiffPage:
    """What one TIFF directory says about its page, read from the bytes, not by a decoder."""

    orientation: int
    width: int
    height: int
    bits_per_sample: int
    samples_per_pixel: int
    photometric: int | None
    extra_samples: tuple[int, ...]


@dataclass(frozen=True)
class StoredFile:
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
    tiff_pages: tuple[TiffPage, ...] = ()


def stored_file(data: bytes) -> StoredFile:
    """The file as decoders get it: without the orientation they would apply by themselves.

    Raises:
        ValueError: TIFF directories that loop, lie outside the file or hold too many entries.
        struct.error: A TIFF directory lies outside the file.
        UnsupportedLayoutError: A TIFF Orientation tag that is not an unsigned integer.
    """
    if data[:4] in _TIFF_PREFIXES:
        neutral, pages = _tiff_without_orientation(data)
        return StoredFile(neutral, tiff_pages=pages)
    if sniff_image_format(data[:SNIFF_BYTES]) == "PNG":
        neutral, exif = _png_without_exif(data)
        return StoredFile(neutral, png_exif=exif)
    return StoredFile(data)


def _png_without_exif(data: bytes) -> tuple[bytes, bytes | None]:
    """A PNG without its ``eXIf`` chunks, and the first one's payload (None when it has none).

    Neither Pillow nor OpenCV then has an orientation to apply; the rule reads the payload.
    """
    position = len(PNG_SIGNATURE)
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


def _tiff_without_orientation(data: bytes) -> tuple[bytes, tuple[TiffPage, ...]]:
    """A copy of a TIFF whose pages all say orientation 1, and each page's own directory.

    Pillow's TIFF plugin turns pages while loading them (by the Orientation tag or, without
    one, by XMP's), and OpenCV's TIFF decoder turns them whatever its flags: given this copy,
    both return the stored pixels. XMP ``tiff:Orientation`` is respelled so that nothing reads
    it. Directories are walked as Pillow walks them (its byte order and BigTIFF test).

    Raises:
        ValueError: The directories form a loop, lie outside the file or hold too many entries.
        struct.error: A directory lies outside the file.
        UnsupportedLayoutError: An Orientation tag that is not an unsigned integer.
    """
    endian = ">" if data[:2] == b"MM" else "<"
    big = data[2] == 43
    pointer, inline, entry_size, head = ("Q", 8, 20, 8) if big else ("L", 4, 12, 2)

    def read(code: str, at: int) -> tuple[int, ...]:
        return struct.unpack_from(endian + code, data, at)

    patched = bytearray(data)
    pages: list[TiffPage] = []
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
            if tag == TAG_ORIENTATION:
                if code is None or number < 1:
                    raise UnsupportedLayoutError("TIFF orientation tag is not an integer")
                tags[tag] = read(code, where)
                struct.pack_into(endian + code, patched, where, 1)
            elif tag == _TIFF_TAG_XMP:
                xmp = bytes(patched[where : where + size])
                patched[where : where + size] = xmp.replace(_XMP_ORIENTATION, _XMP_NO_ORIENTATION)
            elif tag in _TIFF_PAGE_TAGS and code is not None and 1 <= number <= 16:
                tags[tag] = read(f"{number}{code}", where)
        pages.append(
            TiffPage(
                orientation=tags.get(TAG_ORIENTATION, (1,))[0],
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
