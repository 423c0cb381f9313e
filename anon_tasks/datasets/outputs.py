"""Deleting outputs from dest: only files this tool wrote, as it wrote them, inside dest.

Dest mirrors the source. The one rule: a file that a previous manifest records as this tool's
output (an image or a caption sidecar), that no image of this run produces, is an orphan and
is deleted, provided it is still what was written (its recorded fingerprint). Everything else
stays: a file the user put in place of an output, a file outside dest (a manifest may have been
edited, a folder in dest may be a link), anything inside the source, and the tool's own
``_anonymize`` folder. Folders emptied by a deletion go too, so that a file may take the place
of a folder of the same name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from anon_tasks.core.errors import UnsafePathError
from anon_tasks.core.records import ManifestRow
from anon_tasks.core.urls import is_local, local_path
from anon_tasks.datasets.manifest import MANIFEST_DIR
from anon_tasks.storage.fingerprints import file_fingerprint
from anon_tasks.storage.locations import StorageOptions, join_url, location_within, url_to_fs

__all__ = ["produced_paths", "recorded_outputs", "remove_files", "remove_orphans"]

logger = logging.getLogger(__name__)


def recorded_outputs(row: ManifestRow) -> dict[str, str | None]:
    """The files in dest a manifest row records as written, with their fingerprints then."""
    if row.output is None:
        return {}
    return {row.output: row.output_fingerprint, **row.sidecars}


def _check_target(url: str, dest: str, protected_root: str | None) -> None:
    """Refuse a target outside dest, inside the source, or in the tool's own folder."""
    if not location_within(url, dest):
        raise UnsafePathError("lies outside dest; not removed", source=url)
    if protected_root is not None and location_within(url, protected_root):
        raise UnsafePathError("lies inside the source; not removed", source=url)
    if location_within(url, join_url(dest, MANIFEST_DIR)):
        raise UnsafePathError("is this tool's own bookkeeping; not removed", source=url)


def _remove_local(path: Path, dest: str) -> None:
    # The folder is resolved (a linked folder in dest may lead elsewhere; the caller checked
    # where); the file itself is not: unlinking a link removes the link, not its target.
    path.unlink(missing_ok=True)
    root = Path(os.path.realpath(local_path(dest)))
    folder = Path(os.path.realpath(path.parent))
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


def _remove_one(
    dest: str,
    relative: str,
    recorded: str | None,
    options: StorageOptions | None,
    protected_root: str | None,
) -> bool:
    """Delete one recorded output if it is still what was written; whether it was deleted."""
    url = join_url(dest, relative)
    if is_local(url):
        path = local_path(url)
        real = str(Path(os.path.realpath(path.parent)) / path.name)
        _check_target(real, dest, protected_root)
    else:
        _check_target(url, dest, protected_root)
    current = file_fingerprint(url, options)
    if current is None:
        return False
    if recorded is None or current != recorded:
        logger.warning("not removing %s: it changed since this tool wrote it", relative)
        return False
    if is_local(url):
        _remove_local(local_path(url), dest)
    else:
        fs, path = url_to_fs(url, options)
        fs.rm_file(path)
    return True


def remove_orphans(
    dest: str,
    previous: Iterable[ManifestRow],
    keep: Collection[str],
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> dict[str, tuple[str, ...]]:
    """Delete what ``previous`` rows recorded as written that is not in ``keep``.

    Args:
        dest: The output root.
        previous: Rows of a previous manifest whose outputs may be orphans.
        keep: Relative paths this run produces (outputs and sidecars of its images): never
            deleted, even when another row recorded them too (a caption shared by two images).
        options: fsspec storage options for dest.
        protected_root: The source: nothing inside it is deleted.

    Returns:
        For each source path whose files were deleted, the relative paths deleted.
    """
    removed: dict[str, tuple[str, ...]] = {}
    for row in previous:
        recorded = {p: f for p, f in recorded_outputs(row).items() if p not in keep}
        gone = remove_files(dest, recorded, options, protected_root=protected_root)
        if gone:
            removed[row.source] = removed.get(row.source, ()) + gone
    return removed


def remove_files(
    dest: str,
    recorded: Mapping[str, str | None],
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> tuple[str, ...]:
    """Delete files of dest this tool wrote, each only while it still has its recorded
    fingerprint; returns the relative paths deleted."""
    gone: list[str] = []
    for relative, fingerprint in recorded.items():
        try:
            if _remove_one(dest, relative, fingerprint, options, protected_root):
                gone.append(relative)
        except UnsafePathError as exc:
            logger.warning("not removing %s: %s", relative, exc.reason)
    return tuple(gone)


def produced_paths(rows: Iterable[ManifestRow]) -> set[str]:
    """Every file in dest that ``rows`` record as written: outputs and sidecars."""
    produced: set[str] = set()
    for row in rows:
        produced.update(recorded_outputs(row))
    return produced
