"""Metadata carried from a source to its output: EXIF by an allow-list, ICC colour tags only.

Nothing is written back unless it is known to hold no image and no location:

* EXIF (only with ``keep_metadata``): description, make, model, resolution, software, dates,
  artist, copyright and exposure settings; never GPS, orientation, maker notes, previews,
  vendor blobs or XMP, and no value long enough to hold an image.
* ICC profiles: kept when their colour space is the pixels', rebuilt from their colour tags
  alone (a private tag can hold any bytes, a face preview among them).
* JPEG output gets them as APP1 and APP2 segments inserted by ``with_app_segments``.
"""

from __future__ import annotations

import logging
import struct
import warnings
from typing import Any, Final

import numpy as np
from PIL import Image

from anon_tasks.imaging.decoded import color_channel_count
from anon_tasks.imaging.pillow_guard import describe, log_warnings, pillow_guard

__all__ = [
    "EXIF_HEADER",
    "matching_icc",
    "output_exif",
    "source_exif",
    "standard_icc",
    "with_app_segments",
]

logger = logging.getLogger(__name__)

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

#: Largest payload of one JPEG marker segment (its 16-bit length counts itself).
_SEGMENT_MAX: Final = 0xFFFF - 2
_ICC_HEADER: Final = b"ICC_PROFILE\x00"
#: The header of a JPEG APP1 Exif segment's payload (PNG's eXIf chunk holds the block without).
EXIF_HEADER: Final = b"Exif\x00\x00"


def source_exif(im: Image.Image) -> bytes | None:
    """The raw EXIF block of an open image's current frame, or None when it has none."""
    raw = im.info.get("exif")
    return bytes(raw) if isinstance(raw, bytes) and raw else None


# --- EXIF -----------------------------------------------------------------------------------


def output_exif(raw: bytes | None, source: str) -> bytes | None:
    """The source EXIF's allow-listed tags: never location, orientation, previews, maker
    notes, vendor blobs or XMP.

    Args:
        raw: The source's raw EXIF block.
        source: The file's name or URL, for the logs.

    Returns:
        The filtered block, or None when nothing is kept or the block cannot be rewritten
        (a warning is logged: stripping is the safe fallback).
    """
    if not raw:
        return None
    caught: list[warnings.WarningMessage] = []
    try:
        with pillow_guard() as caught:
            return _filtered_exif(raw)
    except Exception as exc:  # stripping is the safe fallback for metadata we cannot rewrite
        logger.warning("%s: EXIF cannot be rewritten, writing none: %s", source, describe(exc))
        return None
    finally:
        log_warnings(caught, source)


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


# --- ICC ------------------------------------------------------------------------------------


def matching_icc(icc: Any, frame: np.ndarray) -> bytes | None:
    """Keep an ICC profile only when its colour space is the pixels' (not CMYK after converting).

    Args:
        icc: The profile as the decoder reported it (anything; only bytes are profiles).
        frame: The first frame the profile describes.

    Returns:
        The profile, rebuilt from its colour tags (``standard_icc``), or None.
    """
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    wanted = b"GRAY" if color_channel_count(frame) == 1 else b"RGB "
    if icc[16:20] != wanted:
        logger.debug("dropping a %r ICC profile for %r pixels", icc[16:20], wanted)
        return None
    return standard_icc(icc)


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


def standard_icc(icc: bytes) -> bytes | None:
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


# --- JPEG APP segments ----------------------------------------------------------------------


def with_app_segments(jpeg: bytes, *, exif: bytes | None, icc_profile: bytes | None) -> bytes:
    """``jpeg`` with an EXIF (APP1) and an ICC profile (APP2, split as the ICC spec says)
    segment inserted after the JFIF header, where Pillow and cameras put them.

    Raises:
        ValueError: The EXIF block does not fit one segment, or the profile 255 segments.
    """
    segments = []
    if exif:
        payload = exif if exif.startswith(EXIF_HEADER) else EXIF_HEADER + exif
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
