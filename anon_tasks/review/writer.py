"""Write a run's review page: ``<dest>/_anonymize/review/index.html``, its pages and sheets.

The page is made from the manifest rows and the outputs in dest alone. ``review.json`` beside
it records a digest of everything the pages show; a rerun that would draw the same pages
(nothing changed) reads that file and draws nothing. Otherwise a sheet whose tiles are all as
before is kept, and a tile drawn before is copied from the earlier sheet (``reuse``): a
threshold rerun draws only the outputs it changed. Pages and sheets of the earlier review that
this one does not use are deleted (only while they are as it wrote them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anon_tasks.core.concurrency import ordered_map, pipeline_threads
from anon_tasks.core.errors import ImageError
from anon_tasks.core.records import ImageStatus, ManifestRow
from anon_tasks.core.settings import MaskSettings
from anon_tasks.core.version import __version__
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import REVIEW_DIR
from anon_tasks.datasets.outputs import remove_files
from anon_tasks.detection.detector import detection_floor
from anon_tasks.review.page import PageContext, page_html, page_name, sheet_name
from anon_tasks.review.reuse import SHEET_FILE, EarlierSheets, sheet_digest, tile_key
from anon_tasks.review.selection import pages_of, score_bands, shown_rows
from anon_tasks.review.thumbnails import contact_sheet, no_preview_tile, thumbnail
from anon_tasks.storage.fingerprints import file_fingerprint
from anon_tasks.storage.locations import StorageOptions, join_url
from anon_tasks.storage.reads import read_bytes
from anon_tasks.storage.writes import write_bytes_atomic

__all__ = ["PAGE_COLUMNS", "PAGE_SIZE", "REVIEW_DIR", "ReviewRequest", "review_url", "write_review"]

logger = logging.getLogger(__name__)

#: Thumbnails on one page (and one contact sheet), and per row of its sheet.
PAGE_SIZE = 60
PAGE_COLUMNS = 6
_RECORD = "review.json"
#: The names a review writes besides its record: only these are ever deleted as stale.
_PAGE_FILE = re.compile(rf"index\.html|page-\d{{4}}\.html|{SHEET_FILE.pattern}")
#: Changes whenever the pages would be drawn differently from the same rows.
_LAYOUT_VERSION = 2


def review_url(dest: str) -> str:
    """Where the review page of ``dest`` is."""
    return join_url(dest, f"{REVIEW_DIR}/index.html")


@dataclass(frozen=True)
class ReviewRequest:
    """What a review is drawn from besides the rows."""

    source: str
    dest: str
    masking: MaskSettings
    threshold: float
    score_floor: float
    limit: int
    max_pixels: int
    options: StorageOptions | None = None

    @classmethod
    def for_run(
        cls, source: str, dest: str, render: RenderSpec, options: StorageOptions | None
    ) -> ReviewRequest:
        """The request of a run with these settings: its mask, threshold and the floor its
        detections were kept down to, ``run.review_images``, ``output.max_pixels``."""
        threshold = render.detection.threshold
        return cls(
            source=source,
            dest=dest,
            masking=render.masking,
            threshold=threshold,
            score_floor=detection_floor(threshold),
            limit=render.run.review_images,
            max_pixels=render.output.max_pixels,
            options=options,
        )


def _digest(keys: Sequence[str], context: PageContext) -> str:
    """Of everything the pages show: the tiles (each key covers its row's output, faces and
    near misses and the mask settings) and what the pages say around them."""
    payload = {"layout": _LAYOUT_VERSION, "version": __version__, "context": repr(context)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n" + "\n".join(keys)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _previous_record(request: ReviewRequest) -> dict[str, object]:
    try:
        content = read_bytes(join_url(request.dest, f"{REVIEW_DIR}/{_RECORD}"), request.options)
        record = json.loads(content)
    except (FileNotFoundError, ImageError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


#: How a tile came to be: drawn from the output, copied from an earlier sheet, or grey (the
#: output is not as the run wrote it, or unreadable now; never copied later).
_DRAWN, _COPIED, _MISSING = "drawn", "copied", "missing"
#: A tile on a sheet kept as it was (all its tiles unchanged).
_KEPT = "kept"


def _tile(
    row: ManifestRow, key: str, request: ReviewRequest, earlier: EarlierSheets
) -> tuple[np.ndarray, str]:
    """The thumbnail of one row's output as the run wrote it, and how it was made. Copied from
    an earlier sheet when one holds it; grey when the file in dest is not that file any more
    (replaced, a link swapped in, gone) or cannot be read."""
    output = row.output or ""
    url = join_url(request.dest, output)

    def check_as_written() -> None:
        if file_fingerprint(url, request.options) != row.output_fingerprint:
            raise FileNotFoundError("it is not the file the run wrote")

    try:
        if earlier.has(key):
            check_as_written()
            copied = earlier.take(key)
            if copied is not None:
                return copied, _COPIED
        content = read_bytes(url, request.options)
        # Checked after the read: bytes read from a file that was not the run's, or that was
        # swapped during the read, fail it (a check before the read would add nothing).
        check_as_written()
    except (FileNotFoundError, ImageError) as exc:
        logger.warning("no review thumbnail of %s: %s", output, exc)
        return no_preview_tile(), _MISSING
    # An output that cannot be decoded is grey here and grey again from the same bytes: the
    # tile is kept under its key like any other.
    return thumbnail(content, row, request.masking, max_pixels=request.max_pixels), _DRAWN


def write_review(rows: Sequence[ManifestRow], request: ReviewRequest) -> str | None:
    """Write the review of a run whose manifest holds ``rows``; its URL, or None when
    ``request.limit`` is 0.

    Raises:
        UnsafePathError: dest's review folder lies inside the source.
    """
    if request.limit <= 0:
        return None
    shown, with_output = shown_rows(rows, request.limit)
    pages = pages_of(shown, PAGE_SIZE)
    context = PageContext(
        source=request.source,
        dest=request.dest,
        method=request.masking.method.value,
        threshold=request.threshold,
        score_floor=request.score_floor,
        bands=tuple(score_bands(rows, request.score_floor, request.threshold)),
        images_with_output=with_output,
        images_shown=len(shown),
        images_failed=sum(row.status is ImageStatus.FAILED for row in rows),
        page_count=len(pages),
        page_size=PAGE_SIZE,
        columns=PAGE_COLUMNS,
    )
    url = review_url(request.dest)
    keys = [tile_key(row, request.masking, request.max_pixels) for row in shown]
    digest = _digest(keys, context)
    previous = _previous_record(request)
    if previous.get("digest") == digest and file_fingerprint(url, request.options) is not None:
        logger.info("review page unchanged: %s", url)
        return url
    files: dict[str, str | None] = {}
    sheets: dict[str, list[str | None]] = {}
    folder = join_url(request.dest, REVIEW_DIR)
    earlier = EarlierSheets(previous, folder, PAGE_COLUMNS, request.options)
    threads = pipeline_threads()

    def write(name: str, content: bytes) -> None:
        target = join_url(folder, name)
        write_bytes_atomic(target, content, request.options, protected_root=request.source)
        files[name] = file_fingerprint(target, request.options)

    made: Counter[str] = Counter()
    key_pages = pages_of(keys, PAGE_SIZE)
    for number, (page, page_keys) in enumerate(zip(pages, key_pages, strict=True), start=1):
        sheet = sheet_name(number, sheet_digest(page_keys))
        kept = earlier.unchanged(sheet, page_keys)
        if kept is not None:
            files[sheet], sheets[sheet] = kept, list(page_keys)
            made[_KEPT] += len(page_keys)
        else:
            tiles = list(
                ordered_map(
                    lambda pair: _tile(pair[0], pair[1], request, earlier),
                    zip(page, page_keys, strict=True),
                    threads=threads,
                    ahead=2 * threads,
                )
            )
            write(sheet, contact_sheet([tile for tile, _ in tiles], PAGE_COLUMNS))
            sheets[sheet] = [
                None if how == _MISSING else key
                for key, (_, how) in zip(page_keys, tiles, strict=True)
            ]
            made.update(how for _, how in tiles)
        write(page_name(number), page_html(number, page, context, sheet).encode("utf-8"))
    _remove_stale(previous, files, request)
    record = {
        "digest": digest,
        "pages": len(pages),
        "images_shown": len(shown),
        "images_with_output": with_output,
        "bands": [band.__dict__ for band in context.bands],
        "files": files,
        "sheets": sheets,
        "thumbnails": {how: made[how] for how in (_DRAWN, _COPIED, _KEPT, _MISSING)},
    }
    write(_RECORD, json.dumps(record, indent=2).encode("utf-8"))
    logger.info(
        "review page: %s (%d image(s) on %d page(s); thumbnails: %d drawn, %d copied, "
        "%d on unchanged sheets, %d not shown)",
        url,
        len(shown),
        len(pages),
        made[_DRAWN],
        made[_COPIED],
        made[_KEPT],
        made[_MISSING],
    )
    return url


def _remove_stale(
    previous: dict[str, object], kept: dict[str, str | None], request: ReviewRequest
) -> None:
    """Delete the pages and sheets the previous review wrote that this one did not."""
    recorded = previous.get("files")
    if not isinstance(recorded, dict):
        return
    stale = {
        name: fingerprint
        for name, fingerprint in recorded.items()
        if isinstance(name, str)
        and _PAGE_FILE.fullmatch(name)
        and name not in kept
        and isinstance(fingerprint, str)
    }
    if stale:  # rooted at the review folder: nothing outside it can be named
        folder = join_url(request.dest, REVIEW_DIR)
        remove_files(folder, stale, request.options, protected_root=request.source)
