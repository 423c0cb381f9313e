"""Tiles of the review drawn before, copied from its contact sheets instead of drawn again.

A tile is keyed by everything it is drawn from: the output's path and fingerprint, the faces
and near misses outlined on it, the mask settings, the pixel limit and the layout. The record
of the last review lists the key of every tile on each sheet it wrote (null for a tile drawn
grey, which is never copied). A threshold rerun changes the few outputs that gained or lost a
mask; every other tile is copied.

An earlier sheet is read only by a name a review writes, from the review folder, while its
fingerprint is the one recorded when it was written, and decoded only when its PNG header has
the size its tiles make. A sheet that fails any of these is not used: its tiles are drawn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from anon_tasks.core.errors import ImageError
from anon_tasks.core.records import ManifestRow
from anon_tasks.core.settings import MaskSettings
from anon_tasks.core.version import __version__
from anon_tasks.review.thumbnails import TILE_PX, sheet_size, tile_origin
from anon_tasks.storage.fingerprints import file_fingerprint
from anon_tasks.storage.locations import StorageOptions, join_url
from anon_tasks.storage.reads import read_bytes

__all__ = ["SHEET_FILE", "EarlierSheets", "sheet_digest", "tile_key"]

logger = logging.getLogger(__name__)

#: The names of contact sheets a review writes (the older form without a digest included).
SHEET_FILE = re.compile(r"sheet-\d{4}(?:-[0-9a-f]{16})?\.png")
#: Changes whenever the same inputs would draw a different tile or sheet.
_TILE_LAYOUT = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Decoded earlier sheets kept at once (about 7 MB each): a threshold rerun reorders the images,
#: so a page copies from sheets all over the earlier review. The default review (600
#: thumbnails) has 10 sheets, each then decoded once; a longer one decodes some again.
_SHEETS_KEPT = 10


def tile_key(row: ManifestRow, masking: MaskSettings, max_pixels: int) -> str:
    """The key of the thumbnail of ``row``'s output: equal keys draw equal tiles."""
    settings = [_TILE_LAYOUT, __version__, TILE_PX, masking.model_dump(mode="json"), max_pixels]
    text = "\n".join(
        (
            json.dumps([*settings, row.output, row.output_fingerprint], sort_keys=True),
            row.model_dump_json(include={"faces", "near_misses"}),
        )
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def sheet_digest(keys: Sequence[str]) -> str:
    """A sheet's part of its file name: equal tiles in equal order, equal names."""
    return hashlib.sha256("\n".join(keys).encode("ascii")).hexdigest()[:16]


class EarlierSheets:
    """The sheets of the review recorded in ``record`` that tiles can be copied from.

    Safe to use from several threads."""

    def __init__(
        self,
        record: Mapping[str, object],
        folder_url: str,
        columns: int,
        options: StorageOptions | None,
    ) -> None:
        self._folder, self._columns, self._options = folder_url, columns, options
        self._sheets: dict[str, tuple[list[str | None], str]] = {}
        self._where: dict[str, tuple[str, int]] = {}
        recorded, files = record.get("sheets"), record.get("files")
        if not isinstance(recorded, dict) or not isinstance(files, dict):
            return
        for name, keys in recorded.items():
            fingerprint = files.get(name)
            if not (
                isinstance(name, str)
                and SHEET_FILE.fullmatch(name)
                and isinstance(fingerprint, str)
                and isinstance(keys, list)
                and all(key is None or isinstance(key, str) for key in keys)
            ):
                continue
            self._sheets[name] = (keys, fingerprint)
            for index, key in enumerate(keys):
                if key is not None:
                    self._where.setdefault(key, (name, index))
        self._decoded: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, key: str) -> bool:
        return key in self._where

    def unchanged(self, name: str, keys: Sequence[str]) -> str | None:
        """The fingerprint of sheet ``name`` when the earlier review wrote it with these tiles,
        none drawn grey, and it is still as written; else None."""
        recorded = self._sheets.get(name)
        if recorded is None or recorded[0] != list(keys):
            return None
        fingerprint = file_fingerprint(join_url(self._folder, name), self._options)
        return fingerprint if fingerprint == recorded[1] else None

    def take(self, key: str) -> np.ndarray | None:
        """A copy of the tile square recorded under ``key``; None when its sheet is unusable."""
        where = self._where.get(key)
        if where is None:
            return None
        name, index = where
        with self._lock:
            if name in self._decoded:
                self._decoded.move_to_end(name)
                sheet = self._decoded[name]
            else:
                sheet = self._read(name)
                self._decoded[name] = sheet
                while len(self._decoded) > _SHEETS_KEPT:
                    self._decoded.popitem(last=False)
        if sheet is None:
            return None
        x, y = tile_origin(index, self._columns)
        return sheet[y : y + TILE_PX, x : x + TILE_PX].copy()

    def _read(self, name: str) -> np.ndarray | None:
        keys, fingerprint = self._sheets[name]
        url = join_url(self._folder, name)
        try:
            content = read_bytes(url, self._options)
            if file_fingerprint(url, self._options) != fingerprint:
                raise FileNotFoundError("it is not the sheet the review wrote")
        except (FileNotFoundError, ImageError) as exc:
            logger.debug("earlier review sheet %s not used: %s", name, exc)
            return None
        width, height = sheet_size(len(keys), self._columns)
        if not _png_size_is(content, width, height):
            logger.debug("earlier review sheet %s not used: not %dx%d", name, width, height)
            return None
        bgr = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (height, width):
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _png_size_is(content: bytes, width: int, height: int) -> bool:
    """Whether ``content`` starts as a PNG of ``width`` x ``height`` (its IHDR chunk)."""
    if len(content) < 24 or not content.startswith(_PNG_SIGNATURE) or content[12:16] != b"IHDR":
        return False
    return struct.unpack(">II", content[16:24]) == (width, height)
