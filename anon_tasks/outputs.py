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
from anon_tasks.storage import (
    StorageOptions,
    is_local,
    join_url,
    local_path,
    location_within,
    url_to_fs,
)

__all__ = ["remove_outputs"]

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
