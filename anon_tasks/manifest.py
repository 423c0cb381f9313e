"""The run's audit manifest: ``<dest>/_anonymize/manifest.jsonl``, one JSON object per image.

A partition of a larger run (see ``anonymize_partitioned``) writes its own
``manifest.part-<i>-of-<n>.jsonl`` and ``summary.part-<i>-of-<n>.json`` beside it; the parent
merges them into ``manifest.jsonl``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from anon_tasks.errors import ImageError
from anon_tasks.records import ImageStatus, ManifestRow
from anon_tasks.settings import DetectionSettings, MaskSettings
from anon_tasks.storage import StorageOptions, join_url, read_bytes, write_bytes_atomic

__all__ = [
    "DEFAULT_CACHE_DIR",
    "MANIFEST_DIR",
    "STAGING_DIR",
    "manifest_parameters",
    "manifest_url",
    "read_manifest",
    "summary_url",
    "unchanged_row",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_DIR = "_anonymize"
#: Where local outputs are staged before their atomic rename, out of dataset readers' way.
STAGING_DIR = f"{MANIFEST_DIR}/tmp"
#: Where detections are cached for a local dest when no result storage is named.
DEFAULT_CACHE_DIR = f"{MANIFEST_DIR}/cache"


def _suffix(partition: tuple[int, int] | None) -> str:
    return "" if partition is None else f".part-{partition[0]:04d}-of-{partition[1]:04d}"


def manifest_url(dest: str, partition: tuple[int, int] | None = None) -> str:
    """Where the manifest of a dataset (or of one partition of it) written to ``dest`` lives."""
    return join_url(dest, f"{MANIFEST_DIR}/manifest{_suffix(partition)}.jsonl")


def summary_url(dest: str, partition: tuple[int, int] | None = None) -> str:
    """Where a run (or one partition) leaves its summary as JSON."""
    return join_url(dest, f"{MANIFEST_DIR}/summary{_suffix(partition)}.json")


def read_manifest(
    dest: str, partition: tuple[int, int] | None = None, options: StorageOptions | None = None
) -> dict[str, ManifestRow]:
    """The previous run's rows by source path; empty when there is none or it is unreadable."""
    try:
        content = read_bytes(manifest_url(dest, partition), options)
    except FileNotFoundError:
        return {}
    except ImageError as exc:  # not a regular file, too large: nothing to trust in it
        logger.warning("the previous manifest cannot be read (%s); starting afresh", exc.reason)
        return {}
    rows: dict[str, ManifestRow] = {}
    text = content.decode("utf-8", errors="replace")  # a bad line is dropped, not the run
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = ManifestRow.model_validate_json(line)
        except ValueError:
            logger.warning("manifest line %d is not a valid row; ignored", number)
            continue
        rows[row.source] = row
    return rows


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
    ordered = sorted(rows, key=lambda row: row.source)
    lines = [json.dumps(row.model_dump(mode="json"), sort_keys=True) for row in ordered]
    url = manifest_url(dest, partition)
    write_bytes_atomic(
        url,
        ("\n".join(lines) + "\n").encode("utf-8"),
        options,
        protected_root=protected_root,
    )
    return url


def unchanged_row(previous: ManifestRow) -> ManifestRow:
    """The row of an image whose output is already up to date: the previous row, ``unchanged``."""
    return previous.model_copy(update={"status": ImageStatus.UNCHANGED})


def manifest_parameters(detection: DetectionSettings, masking: MaskSettings) -> dict[str, object]:
    """The run parameters every row records: threshold, quality, the mask and the model."""
    return {
        "threshold": detection.threshold,
        "quality": detection.quality.value,
        **masking.model_dump(mode="json"),
        "model_path": detection.model_path,
    }
