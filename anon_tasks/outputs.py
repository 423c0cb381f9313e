"""Deleting outputs from dest: only files this tool wrote, never anything inside the source.

Dest mirrors the source: when an image leaves the source (consent withdrawn) or can no longer
be anonymised, the output an earlier run wrote for it goes too. The caller names the files from
a previous manifest, which is the only record of what this tool wrote; this module refuses any
of them whose real location lies inside the protected source.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from anon_tasks.errors import UnsafePathError
from anon_tasks.manifest import MANIFEST_DIR
from anon_tasks.records import ManifestRow
from anon_tasks.storage import (
    StorageOptions,
    file_fingerprint,
    is_local,
    join_url,
    local_path,
    location_within,
    url_to_fs,
)

__all__ = ["remove_outputs", "remove_recorded_outputs"]

logger = logging.getLogger(__name__)


def _remove_local(path: Path, protected_root: str | None) -> bool:
    if not os.path.lexists(path):
        return False
    # The folder is resolved (a linked folder in dest may lead into the source); the file
    # itself is not: unlinking a link removes the link, never what it points to.
    real = Path(os.path.realpath(path.parent)) / path.name
    if protected_root is not None and location_within(str(real), protected_root):
        raise UnsafePathError("lies inside the source; not removed", source=str(path))
    if path.is_dir() and not path.is_symlink():
        return False
    path.unlink(missing_ok=True)
    return True


def remove_outputs(
    dest: str,
    relative_paths: Iterable[str],
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> tuple[str, ...]:
    """Delete the files at ``relative_paths`` under ``dest``; returns those that were deleted.

    Args:
        dest: The output root.
        relative_paths: Files a previous manifest records as this tool's outputs.
        options: fsspec storage options for ``dest``.
        protected_root: The source: a file whose real location lies inside it is never deleted
            (it is logged and skipped).
    """
    removed: list[str] = []
    for relative in relative_paths:
        try:
            if relative == MANIFEST_DIR or relative.startswith(MANIFEST_DIR + "/"):
                raise UnsafePathError("is this tool's own bookkeeping", source=relative)
            url = join_url(dest, relative)
            if is_local(url):
                done = _remove_local(local_path(url), protected_root)
            else:
                if protected_root is not None and location_within(url, protected_root, options):
                    raise UnsafePathError("lies inside the source; not removed", source=url)
                fs, path = url_to_fs(url, options)
                done = bool(fs.exists(path))
                if done:
                    fs.rm_file(path)
        except UnsafePathError as exc:
            logger.warning("not removing %s: %s", relative, exc.reason)
            continue
        if done:
            removed.append(relative)
    return tuple(removed)


def remove_recorded_outputs(
    dest: str,
    row: ManifestRow | None,
    options: StorageOptions | None = None,
    *,
    protected_root: str | None = None,
) -> tuple[str, ...]:
    """Delete the output (and sidecars) a manifest row records, if it is still what was written.

    An output whose fingerprint no longer matches the row's (someone replaced it since) is left
    alone, with its sidecars: only files this tool wrote, as it wrote them, are deleted.

    Returns:
        The relative paths deleted.
    """
    if row is None or row.output is None:
        return ()
    try:
        current = file_fingerprint(join_url(dest, row.output), options)
    except UnsafePathError as exc:
        logger.warning("not removing %s: %s", row.output, exc.reason)
        return ()
    if current is None:
        return remove_outputs(dest, row.sidecars, options, protected_root=protected_root)
    if row.output_fingerprint is None or current != row.output_fingerprint:
        logger.warning("not removing %s: it changed since this tool wrote it", row.output)
        return ()
    return remove_outputs(dest, (row.output, *row.sidecars), options, protected_root=protected_root)
