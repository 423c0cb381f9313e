"""Walking a local folder: every entry that is not a folder, by key, links never followed blindly.

A link to a regular file inside the source is that file under the link's name; a link loop, a
dangling link, a link outside the source or to a folder (never descended), FIFOs, sockets and
devices become skipped entries without being opened. Folders are listed one at a time (memory
holds the listings of the folders being walked), a folder already walked (a bind mount) is not
walked again, and an entry that vanishes or cannot be examined is a skip, never an error.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from anon_tasks.core.formats import SNIFF_BYTES
from anon_tasks.core.records import SkippedEntry
from anon_tasks.datasets.entries import (
    Leaf,
    ListedFile,
    display_name,
    join_relative,
    name_problem,
    not_utf8,
    skip_cause,
)
from anon_tasks.storage.fingerprints import local_fingerprint
from anon_tasks.storage.heads import read_local_head

__all__ = ["local_leaves"]


@dataclass(frozen=True)
class _Subfolder:
    """A real folder (not a link) to descend into."""

    path: bytes
    relative_path: str


@dataclass
class _LocalWalk:
    """What a local walk carries from folder to folder."""

    real_root: bytes
    skip_dir: str | None
    visited: set[tuple[int, int]]

    def inside(self, target: bytes) -> bool:
        root = self.real_root.rstrip(b"/") + b"/"
        return target == self.real_root or target.startswith(root)


def _not_regular(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _local_link(path: bytes, relative: str, walk: _LocalWalk) -> Leaf:
    """A link: the regular file it leads to inside the source, or why it is skipped.

    Only ``readlink``/``lstat``/``stat`` are used; nothing is opened.
    """
    try:
        target = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return SkippedEntry(relative_path=relative, reason="link loop; not followed")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return SkippedEntry(relative_path=relative, reason="dangling link (no target)")
        reason = f"link not followed ({skip_cause(exc)})"
        return SkippedEntry(relative_path=relative, reason=reason)
    except (RuntimeError, ValueError):  # loops, on Pythons that raise RuntimeError for them
        return SkippedEntry(relative_path=relative, reason="link loop; not followed")
    if not walk.inside(target):
        return SkippedEntry(relative_path=relative, reason="link to outside the source")
    info = os.stat(target)  # noqa: PTH116 - a bytes path; ``target`` has no links left
    if stat.S_ISDIR(info.st_mode):
        return SkippedEntry(relative_path=relative, reason="link to a folder; not descended")
    if not stat.S_ISREG(info.st_mode):
        what = _not_regular(info.st_mode)
        return SkippedEntry(relative_path=relative, reason=f"link to {what}; not followed")
    return ListedFile(
        relative_path=relative,
        size=info.st_size,
        fingerprint=local_fingerprint(info),
        is_link=True,
        read_head=partial(read_local_head, target, SNIFF_BYTES),
    )


def _local_entry(
    entry: os.DirEntry[bytes], parent: str, walk: _LocalWalk
) -> tuple[str, Leaf | _Subfolder] | None:
    """(sort key, what one directory entry is); None for the folder the caller skips."""
    relative = join_relative(parent, display_name(entry.name))
    is_folder = entry.is_dir(follow_symlinks=False)
    key = relative + "/" if is_folder else relative
    try:
        name = entry.name.decode("utf-8")
    except UnicodeDecodeError:
        problem: str | None = not_utf8(folder=is_folder)
    else:
        problem = name_problem(name, folder=is_folder)
    if problem is not None:
        return key, SkippedEntry(relative_path=relative, reason=problem)
    if is_folder:
        if not parent and name == walk.skip_dir:
            return None
        info = entry.stat(follow_symlinks=False)
        if (info.st_dev, info.st_ino) in walk.visited:
            reason = "folder already listed (a mount of another folder); not descended"
            return key, SkippedEntry(relative_path=relative, reason=reason)
        walk.visited.add((info.st_dev, info.st_ino))
        return key, _Subfolder(path=entry.path, relative_path=relative)
    if entry.is_symlink():
        return key, _local_link(entry.path, relative, walk)
    info = entry.stat(follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode):
        reason = f"{_not_regular(info.st_mode)}, not a regular file"
        return key, SkippedEntry(relative_path=relative, reason=reason)
    return key, ListedFile(
        relative_path=relative,
        size=info.st_size,
        fingerprint=local_fingerprint(info),
        is_link=False,
        read_head=partial(read_local_head, entry.path, SNIFF_BYTES),
    )


def _local_folder(path: bytes, relative: str, walk: _LocalWalk) -> list[tuple[str, Any]]:
    """One folder's entries, sorted by key; each entry examined on its own.

    Raises:
        OSError: The folder itself cannot be listed.
    """
    with os.scandir(path) as listing:
        entries = list(listing)
    items: list[tuple[str, Any]] = []
    for entry in entries:
        try:
            item = _local_entry(entry, relative, walk)
        except (OSError, ValueError, RuntimeError) as exc:  # vanished or unreadable meanwhile
            where = join_relative(relative, display_name(entry.name))
            reason = (
                "vanished while being listed"
                if isinstance(exc, FileNotFoundError)
                else f"cannot be examined ({skip_cause(exc)})"
            )
            item = (where, SkippedEntry(relative_path=where, reason=reason))
        if item is not None:
            items.append(item)
    items.sort(key=lambda item: item[0])
    return items


def local_leaves(root: Path, skip_dir: str | None = None) -> Iterator[tuple[str, Leaf]]:
    """Every entry under ``root`` that is not a folder, by key, never descending into links.

    A folder's key is its path with a slash, so entries come in the order of their paths.

    Args:
        root: The folder to walk.
        skip_dir: A top-level folder not to descend into (e.g. the manifest's own folder).

    Raises:
        OSError: ``root`` itself cannot be listed (missing, not a folder).
    """
    root_bytes = os.fsencode(root)
    root_info = os.stat(root_bytes)  # noqa: PTH116 - a bytes path
    walk = _LocalWalk(
        real_root=os.path.realpath(root_bytes),
        skip_dir=skip_dir,
        visited={(root_info.st_dev, root_info.st_ino)},
    )
    stack = [iter(_local_folder(root_bytes, "", walk))]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        key, item = step
        if isinstance(item, _Subfolder):
            try:
                listing = _local_folder(item.path, item.relative_path, walk)
            except OSError as exc:
                reason = f"folder cannot be listed ({skip_cause(exc)}); not descended"
                listing = [(key, SkippedEntry(relative_path=item.relative_path, reason=reason))]
            stack.append(iter(listing))
            continue
        yield key, item
