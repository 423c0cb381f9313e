"""Image datasets: every entry of a folder or prefix, as an image or as a skipped entry.

``scan_dataset`` accounts for every entry of the source: each image comes with its caption
sidecars (same folder, same stem) and a content fingerprint from the listing alone (size,
mtime, inode and ctime locally; ETag or version id on object stores); every other entry comes
as a ``SkippedEntry`` that says why it is not processed. One bad entry (a link loop, a FIFO, a
name that is not UTF-8, an unreadable file) becomes a skipped entry; it never stops or hangs
the listing.

The parts: ``local_walk`` and ``remote_listing`` list the entries (links, FIFOs, hidden and
badly named entries become skips there), ``classification`` tells images from sidecars and
other files (sniffing, through ``storage.heads``, only files whose name says nothing), and
this module groups the files of one stem and puts the verdicts back in key order. A dataset of
images with image extensions and their captions is listed without opening any file; a rerun
pays the listing plus one small read per other file.

Order: entries come sorted by relative path, a folder sorting as its name with a slash. Listing
is a generator: a prefix with many objects is walked page by page. Memory holds the listings of
the local folders being walked, and on object stores only the keys between the first and last
file of one stem (``a.jpg``, ``a.k/...``, ``a.txt``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from anon_tasks.core.records import ImageRef, SkippedEntry
from anon_tasks.core.urls import is_local, local_path
from anon_tasks.datasets.classification import classify
from anon_tasks.datasets.entries import Leaf, ListedFile, join_relative, split_suffix
from anon_tasks.datasets.local_walk import local_leaves
from anon_tasks.datasets.manifest import MANIFEST_DIR
from anon_tasks.datasets.remote_listing import remote_leaves
from anon_tasks.storage.locations import StorageOptions

__all__ = ["file_fingerprints", "list_source", "scan_dataset"]

logger = logging.getLogger(__name__)

_PENDING: Final = object()  # a queued entry whose verdict is not known yet


@dataclass
class _Group:
    """The files of one folder with one stem, and the queue slots their verdicts go to."""

    files: list[ListedFile] = field(default_factory=list)
    slots: list[list[Any]] = field(default_factory=list)

    def close(self) -> None:
        for slot, verdict in zip(self.slots, classify(self.files), strict=True):
            slot[0] = verdict


def _grouped(leaves: Iterable[tuple[str, Leaf]]) -> Iterator[ImageRef | SkippedEntry]:
    """Images with their sidecars, and skipped entries, from leaves sorted by key.

    The files of one folder and stem (``a``, ``a.jpg``, ``a.txt``...) are the keys ``s`` and
    ``s.*`` of that stem path ``s``; in key order other keys may come between them (``a.k/x``,
    ``a-1.jpg``), so each stem stays open until a key passes ``s.*``. Verdicts come out in key
    order; only the entries between an open stem's first and last file are held.
    """
    queue: deque[list[Any]] = deque()
    open_groups: dict[str, _Group] = {}
    for key, leaf in leaves:
        for prefix in [p for p in open_groups if key > p and not key.startswith(p)]:
            open_groups.pop(prefix).close()
        slot: list[Any] = [_PENDING]
        if isinstance(leaf, SkippedEntry):
            slot[0] = leaf
        else:
            folder, _, name = leaf.relative_path.rpartition("/")
            prefix = join_relative(folder, split_suffix(name)[0]) + "."
            group = open_groups.setdefault(prefix, _Group())
            group.files.append(leaf)
            group.slots.append(slot)
        queue.append(slot)
        while queue and queue[0][0] is not _PENDING:
            verdict = queue.popleft()[0]
            if verdict is not None:
                yield verdict
    for group in open_groups.values():
        group.close()
    for slot in queue:
        if slot[0] is not None:
            yield slot[0]


def scan_dataset(
    root_url: str, options: StorageOptions | None = None
) -> Iterator[ImageRef | SkippedEntry]:
    """Every entry under ``root_url``: each image with its sidecars, or why it is skipped.

    Args:
        root_url: A local folder or fsspec URL (``s3://bucket/prefix``).
        options: fsspec storage options for remote URLs.

    Yields:
        ``ImageRef`` for each image (by extension, or by its first bytes for other files),
        ``SkippedEntry`` for each entry that is not processed (not an image, not a regular
        file, a link that is not followed, a hidden file or folder, a bad name), sorted by
        relative path. A caption sidecar comes inside its image, not on its own.

    Raises:
        OSError: A local ``root_url`` cannot be listed (missing, not a folder).

    Example:
        >>> skipped = [e for e in scan_dataset("raw") if isinstance(e, SkippedEntry)]
    """
    if is_local(root_url):
        leaves = local_leaves(local_path(root_url))
    else:
        leaves = remote_leaves(root_url, None, options)
    for entry in _grouped(leaves):
        if isinstance(entry, SkippedEntry):
            logger.debug("skipping %s: %s", entry.relative_path, entry.reason)
        yield entry


def list_source(
    root_url: str, options: StorageOptions | None = None
) -> tuple[list[ImageRef], list[SkippedEntry]]:
    """What a run finds in a source: its images, sorted by path, and the entries it skips.

    ``scan_dataset`` with one more rule: images inside a source folder named like dest's
    bookkeeping folder (``_anonymize``) are skipped, since their outputs would land among the
    manifest and be taken for the tool's own files.
    """
    images: list[ImageRef] = []
    skipped: list[SkippedEntry] = []
    for entry in scan_dataset(root_url, options):
        if isinstance(entry, ImageRef) and entry.relative_path.startswith(MANIFEST_DIR + "/"):
            entry = SkippedEntry(
                relative_path=entry.relative_path,
                reason=f"inside a source folder named {MANIFEST_DIR}, which dest reserves for "
                "the manifest",
                fingerprint=entry.fingerprint,
            )
        (images if isinstance(entry, ImageRef) else skipped).append(entry)
    return sorted(images, key=lambda image: image.relative_path), skipped


def file_fingerprints(
    root_url: str, *, skip_dir: str | None = None, options: StorageOptions | None = None
) -> dict[str, str]:
    """Fingerprints of every regular file under ``root_url`` by relative path, from one listing.

    Nothing is read. What ``scan_dataset`` would skip (hidden files and folders, links that are
    not followed, FIFOs, bad names) is left out, so a bad entry in a destination never stops a
    run.

    Args:
        root_url: A local folder or fsspec URL; a missing folder has no files.
        skip_dir: A top-level folder not to descend into (e.g. the manifest's own folder).
        options: fsspec storage options for remote URLs.
    """
    if is_local(root_url):
        root = local_path(root_url)
        if not root.is_dir():
            return {}
        leaves = local_leaves(root, skip_dir)
    else:
        leaves = remote_leaves(root_url, skip_dir, options)
    fingerprints: dict[str, str] = {}
    for _key, leaf in leaves:
        if isinstance(leaf, ListedFile):
            fingerprints[leaf.relative_path] = leaf.fingerprint
        else:
            logger.debug("not listing %s: %s", leaf.relative_path, leaf.reason)
    return fingerprints
