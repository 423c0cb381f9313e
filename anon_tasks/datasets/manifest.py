"""The run's audit manifest: ``<dest>/_anonymize/manifest.jsonl``, one JSON object per image.

A partition of a larger run (see ``anonymize_partitioned``) writes its own
``manifest.part-<i>-of-<n>.jsonl`` and ``summary.part-<i>-of-<n>.json`` beside it; the parent
merges them into ``manifest.jsonl``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable

from anon_tasks.core.errors import ImageError
from anon_tasks.core.records import ImageStatus, ManifestRow
from anon_tasks.core.settings import DetectionSettings, MaskSettings
from anon_tasks.core.urls import is_local, local_path
from anon_tasks.storage.locations import StorageOptions, join_url, url_to_fs
from anon_tasks.storage.reads import read_bytes
from anon_tasks.storage.writes import write_bytes_atomic

__all__ = [
    "DEFAULT_CACHE_DIR",
    "INTERNAL_DIRS",
    "JOURNAL_DIR",
    "MANIFEST_DIR",
    "REVIEW_DIR",
    "STAGING_DIR",
    "manifest_parameters",
    "manifest_url",
    "read_manifest",
    "read_recorded_rows",
    "remove_journals",
    "summary_url",
    "unchanged_row",
    "write_journal",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_DIR = "_anonymize"
#: Where local outputs are staged before their atomic rename, out of dataset readers' way.
STAGING_DIR = f"{MANIFEST_DIR}/tmp"
#: Where detections are cached for a local dest when no result storage is named.
DEFAULT_CACHE_DIR = f"{MANIFEST_DIR}/cache"
#: Rows of written shards, until the run's manifest holds them (a stopped run leaves them).
JOURNAL_DIR = f"{MANIFEST_DIR}/journal"
#: The run's review page, its contact sheets and its record.
REVIEW_DIR = f"{MANIFEST_DIR}/review"
#: Every folder of dest the tool writes its own files into: none may lead into the source.
INTERNAL_DIRS = (MANIFEST_DIR, STAGING_DIR, DEFAULT_CACHE_DIR, JOURNAL_DIR, REVIEW_DIR)


def _suffix(partition: tuple[int, int] | None) -> str:
    return "" if partition is None else f".part-{partition[0]:04d}-of-{partition[1]:04d}"


def manifest_url(dest: str, partition: tuple[int, int] | None = None) -> str:
    """Where the manifest of a dataset (or of one partition of it) written to ``dest`` lives."""
    return join_url(dest, f"{MANIFEST_DIR}/manifest{_suffix(partition)}.jsonl")


def summary_url(dest: str, partition: tuple[int, int] | None = None) -> str:
    """Where a run (or one partition) leaves its summary as JSON."""
    return join_url(dest, f"{MANIFEST_DIR}/summary{_suffix(partition)}.json")


def _rows_of(url: str, options: StorageOptions | None) -> list[ManifestRow]:
    """The valid rows of one manifest or journal file; none when it is missing or unreadable."""
    try:
        content = read_bytes(url, options)
    except FileNotFoundError:
        return []
    except ImageError as exc:  # not a regular file, too large: nothing to trust in it
        logger.warning("%s cannot be read (%s); not trusted", url, exc.reason)
        return []
    rows: list[ManifestRow] = []
    text = content.decode("utf-8", errors="replace")  # a bad line is dropped, not the run
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(ManifestRow.model_validate_json(line))
        except ValueError:
            logger.warning("%s line %d is not a valid row; ignored", url, number)
    return rows


def read_manifest(
    dest: str, partition: tuple[int, int] | None = None, options: StorageOptions | None = None
) -> dict[str, ManifestRow]:
    """The previous run's rows by source path; empty when there is none or it is unreadable."""
    return {row.source: row for row in _rows_of(manifest_url(dest, partition), options)}


def _bookkeeping_files(dest: str, folder: str, options: StorageOptions | None) -> list[str]:
    """URLs of the ``.jsonl`` files directly in one of dest's bookkeeping folders."""
    url = join_url(dest, folder)
    if is_local(url):
        path = local_path(url)
        if not path.is_dir() or path.is_symlink():
            return []
        return sorted(str(child) for child in path.iterdir() if child.name.endswith(".jsonl"))
    fs, root = url_to_fs(url, options)
    fs.invalidate_cache(root)
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    protocol = url.split("://", 1)[0]
    return sorted(f"{protocol}://{name}" for name in names if str(name).endswith(".jsonl"))


def read_recorded_rows(
    dest: str, options: StorageOptions | None = None
) -> tuple[dict[str, list[ManifestRow]], dict[str, list[ManifestRow]]]:
    """Every row any run recorded in dest: those of each manifest and of each journal, by URL.

    The whole-dataset manifest, every partition's manifest (whatever partition count wrote
    it) and the journals of runs that were stopped before their manifest: what dest may hold
    that this tool wrote. Mirroring needs all of them, not only this run's own manifest.
    """
    manifests = [
        url
        for url in _bookkeeping_files(dest, MANIFEST_DIR, options)
        if url.rsplit("/", 1)[-1].startswith("manifest")
    ]
    rows = {url: _rows_of(url, options) for url in manifests}
    journals = {
        url: _rows_of(url, options) for url in _bookkeeping_files(dest, JOURNAL_DIR, options)
    }
    return rows, journals


def write_journal(
    dest: str,
    rows: Iterable[ManifestRow],
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> str | None:
    """Record rows just written in a journal of their own, before the run's manifest exists.

    A run stopped before its manifest (killed, crashed) leaves its journals; the next run reads
    them as recorded outputs. Returns the journal's URL (None when there was nothing to say).
    """
    rows = list(rows)
    if not rows:
        return None
    url = join_url(dest, f"{JOURNAL_DIR}/{uuid.uuid4().hex}.jsonl")
    write_bytes_atomic(url, _jsonl(rows), options, protected_root=protected_root)
    return url


def remove_journals(urls: Iterable[str], options: StorageOptions | None = None) -> None:
    """Delete journals whose rows a manifest now holds."""
    for url in urls:
        if is_local(url):
            local_path(url).unlink(missing_ok=True)
            continue
        fs, path = url_to_fs(url, options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            continue


def write_manifest(
    dest: str,
    rows: Iterable[ManifestRow],
    partition: tuple[int, int] | None = None,
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> str:
    """Write the manifest (sorted by source path) in one atomic step; returns its URL.

    Args:
        protected_root: The source: a manifest whose real location lies inside it is refused.
    """
    url = manifest_url(dest, partition)
    ordered = sorted(rows, key=lambda row: row.source)
    write_bytes_atomic(url, _jsonl(ordered), options, protected_root=protected_root)
    return url


def _jsonl(rows: Iterable[ManifestRow]) -> bytes:
    """Rows as JSON lines, keys sorted: the one way manifests and journals are written."""
    lines = [json.dumps(row.model_dump(mode="json"), sort_keys=True) for row in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def unchanged_row(previous: ManifestRow, threshold: float) -> ManifestRow:
    """The row of an image whose output is already up to date at ``threshold``: the previous
    row, ``unchanged``, recording that threshold (it masks the same faces: see
    ``planning.masks_hold``)."""
    parameters = {**previous.parameters, "threshold": threshold}
    return previous.model_copy(update={"status": ImageStatus.UNCHANGED, "parameters": parameters})


def manifest_parameters(detection: DetectionSettings, masking: MaskSettings) -> dict[str, object]:
    """The run parameters every row records: threshold, quality, the mask and the model."""
    return {
        "threshold": detection.threshold,
        "quality": detection.quality.value,
        **masking.model_dump(mode="json"),
        "model_path": detection.model_path,
    }
