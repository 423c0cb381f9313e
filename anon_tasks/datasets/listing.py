"""Image datasets: every entry of a folder or prefix, as an image or as a skipped entry.

``scan_dataset`` accounts for every entry of the source: each image comes with its caption
sidecars (same folder, same stem) and a content fingerprint from the listing alone (size,
mtime, inode and ctime locally; ETag or version id on object stores); every other entry comes
as a ``SkippedEntry`` that says why it is not processed. One bad entry (a link loop, a FIFO, a
name that is not UTF-8, an unreadable file) becomes a skipped entry; it never stops or hangs
the listing.

Which files are images, and what that costs:

* A regular file whose extension names an image format (``formats.SUFFIX_FORMATS``: ``.jpg``,
  ``.jfif``, ``.bmp``, ``.heic``...) is an image without being read; the decoder refuses it
  later if it is not one.
* Any other regular file that is not a caption sidecar of an image is sniffed: its first
  ``SNIFF_BYTES`` bytes are read (locally one small read, on an object store one ranged GET)
  and an image format there makes it an image (an extension-less ``IMG_0001``,
  ``photo.jpg.bak``). A dataset of images with image extensions and their captions is listed
  without opening any file; a rerun pays the listing plus one small read per other file.

Only regular files are ever opened, without blocking (``O_NONBLOCK``, checked with ``fstat``).
Locally, links are never followed blindly: a link to a regular file inside the source is that
file under the link's name; a link loop, a dangling link, a link outside the source or to a
folder (never descended), FIFOs, sockets and devices are skipped without being opened, and a
caption sidecar that is a link is never copied. Hidden files are skipped one by one, a hidden
folder once, without descending. Names that are not valid UTF-8 or hold control characters or
backslashes are skipped and shown with ``\\xNN`` escapes.

Order: entries come sorted by relative path, a folder sorting as its name with a slash. Listing
is a generator: a prefix with many objects is walked page by page. Memory holds the listings of
the local folders being walked, and on object stores only the keys between the first and last
file of one stem (``a.jpg``, ``a.k/...``, ``a.txt``).

A later option: ``storage.read_head`` (bounded in time by a thread) could replace the two head
readers here; locally it opens without ``O_NOFOLLOW``, remotely it costs one more request per
sniffed object (``info`` before the ranged read), which the listing already answered.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Final

from anon_tasks.core.errors import UnreadableFileError
from anon_tasks.core.formats import SNIFF_BYTES, SUFFIX_FORMATS, sniff_image_format
from anon_tasks.core.records import ImageRef, SidecarRef, SkippedEntry
from anon_tasks.storage.files import (
    StorageOptions,
    is_local,
    local_fingerprint,
    local_path,
    object_fingerprint,
    url_to_fs,
)

__all__ = [
    "CAPTION_SUFFIXES",
    "IMAGE_SUFFIXES",
    "REMOTE_HEAD_TIMEOUT_S",
    "file_fingerprints",
    "is_image_name",
    "list_dataset",
    "scan_dataset",
]

logger = logging.getLogger(__name__)

#: Extensions that make a regular file an image without reading it (case-insensitive).
IMAGE_SUFFIXES: Final = frozenset(SUFFIX_FORMATS)
#: Caption sidecars copied beside their image (same stem), as LoRA trainers expect.
CAPTION_SUFFIXES: Final = (".txt", ".caption", ".json")
#: Longest wait for the first bytes of one object when sniffing it on an object store.
REMOTE_HEAD_TIMEOUT_S: Final = 30.0

#: Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_PENDING: Final = object()  # a queued entry whose verdict is not known yet


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension; hidden files never count."""
    pure = PurePosixPath(name)
    return not pure.name.startswith(".") and pure.suffix.lower() in IMAGE_SUFFIXES


# --- names -------------------------------------------------------------------------------------


def _display(name: str | bytes) -> str:
    """A name as it can be logged and stored: bad bytes and control characters as ``\\xNN``."""
    if isinstance(name, bytes):
        text = name.decode("utf-8", "backslashreplace")
    else:
        try:
            text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
            text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _name_problem(name: str, *, folder: bool) -> str | None:
    """Why a file or folder name is not processed, or None for a plain, safe name.

    Spaces, colons and any printable Unicode are fine; hidden names, control characters
    (newlines forge log and report lines) and backslashes (a separator elsewhere) are not.
    """
    kind = "folder" if folder else "file"
    tail = "; not descended" if folder else ""
    if name in ("", ".", ".."):
        return f"{kind} name {name!r} is not a plain name{tail}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return _not_utf8(folder=folder)
    if name.startswith("."):
        return "hidden folder, not descended" if folder else "hidden file"
    if _CONTROL.search(name):
        return f"{kind} name contains a control character{tail}"
    if "\\" in name:
        return f"{kind} name contains a backslash{tail}"
    return None


def _not_utf8(*, folder: bool) -> str:
    if folder:
        return "folder name is not valid UTF-8; not descended"
    return "file name is not valid UTF-8"


def _split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) as ``PurePosixPath`` splits a name: ``a.tar.gz`` -> (``a.tar``, ``.gz``)."""
    dot = name.rfind(".")
    if 0 < dot < len(name) - 1:
        return name[:dot], name[dot:]
    return name, ""


def _why(exc: BaseException) -> str:
    """A short cause for a skip reason: the OS error text, never a path or a URL."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, UnreadableFileError):
        return exc.reason
    return type(exc).__name__


# --- entries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    """A regular file (or a link to one inside the source): an image candidate or a sidecar."""

    relative_path: str
    size: int
    fingerprint: str
    is_link: bool
    read_head: Callable[[], bytes] = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Subfolder:
    """A real folder (not a link) to descend into."""

    path: bytes
    relative_path: str


_Leaf = _File | SkippedEntry


def _read_local_head(path: bytes, limit: int = SNIFF_BYTES) -> bytes:
    """The first ``limit`` bytes of a local regular file, without ever blocking on another kind.

    Opened with ``O_NONBLOCK`` and ``O_NOFOLLOW`` (a FIFO swapped in after listing opens at
    once and is refused by ``fstat``, a link swapped in is refused by the open).

    Raises:
        UnreadableFileError: It is not a regular file.
        OSError: It cannot be opened or read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    handle = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise UnreadableFileError("not a regular file", source=_display(path))
        chunks: list[bytes] = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(handle, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def _read_remote_head(fs: Any, path: str, size: int, limit: int = SNIFF_BYTES) -> bytes:
    """The first bytes of an object: one ranged read, bounded in time on async filesystems."""
    end = min(limit, size)
    if end <= 0:
        return b""  # an empty object: a ranged GET of it is an error on S3
    if getattr(fs, "async_impl", False) and getattr(fs, "loop", None) is not None:
        from fsspec.asyn import sync

        return sync(fs.loop, fs._cat_file, path, start=0, end=end, timeout=REMOTE_HEAD_TIMEOUT_S)
    return fs.cat_file(path, start=0, end=end)


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


@dataclass
class _LocalWalk:
    """What a local walk carries from folder to folder."""

    real_root: bytes
    skip_dir: str | None
    visited: set[tuple[int, int]]

    def inside(self, target: bytes) -> bool:
        root = self.real_root.rstrip(b"/") + b"/"
        return target == self.real_root or target.startswith(root)


def _local_link(path: bytes, relative: str, walk: _LocalWalk) -> _Leaf:
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
        return SkippedEntry(relative_path=relative, reason=f"link not followed ({_why(exc)})")
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
    return _File(
        relative_path=relative,
        size=info.st_size,
        fingerprint=local_fingerprint(info),
        is_link=True,
        read_head=partial(_read_local_head, target),
    )


def _local_entry(
    entry: os.DirEntry[bytes], parent: str, walk: _LocalWalk
) -> tuple[str, _Leaf | _Subfolder] | None:
    """(sort key, what one directory entry is); None for the folder the caller skips."""
    relative = _join(parent, _display(entry.name))
    is_folder = entry.is_dir(follow_symlinks=False)
    key = relative + "/" if is_folder else relative
    try:
        name = entry.name.decode("utf-8")
    except UnicodeDecodeError:
        problem: str | None = _not_utf8(folder=is_folder)
    else:
        problem = _name_problem(name, folder=is_folder)
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
    return key, _File(
        relative_path=relative,
        size=info.st_size,
        fingerprint=local_fingerprint(info),
        is_link=False,
        read_head=partial(_read_local_head, entry.path),
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
            where = _join(relative, _display(entry.name))
            reason = (
                "vanished while being listed"
                if isinstance(exc, FileNotFoundError)
                else f"cannot be examined ({_why(exc)})"
            )
            item = (where, SkippedEntry(relative_path=where, reason=reason))
        if item is not None:
            items.append(item)
    items.sort(key=lambda item: item[0])
    return items


def _local_leaves(root: Path, skip_dir: str | None = None) -> Iterator[tuple[str, _Leaf]]:
    """Every entry under ``root`` that is not a folder, by key, never descending into links.

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
                reason = f"folder cannot be listed ({_why(exc)}); not descended"
                listing = [(key, SkippedEntry(relative_path=item.relative_path, reason=reason))]
            stack.append(iter(listing))
            continue
        yield key, item


# --- object stores -----------------------------------------------------------------------------


def _s3_pages(fs: Any, root_path: str) -> Iterator[list[dict[str, Any]]]:
    """One ``list_objects_v2`` page (up to 1,000 objects) at a time, in key order."""
    from fsspec.asyn import sync

    bucket, _, prefix = root_path.partition("/")
    prefix = prefix + "/" if prefix else ""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        page = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        yield [
            {"name": f"{bucket}/{item['Key']}", "size": item.get("Size", 0), **item}
            for item in page.get("Contents", [])
        ]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _remote_entries(fs: Any, root_path: str) -> Iterator[dict[str, Any]]:
    """Every object under ``root_path`` in key order: paged from S3 (never the whole listing
    at once), from ``find`` elsewhere."""
    if type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_call_s3"):
        for page in _s3_pages(fs, root_path):
            yield from page
        return
    fs.invalidate_cache()
    for path, info in sorted(fs.find(root_path, detail=True).items()):
        yield {**info, "name": path}


def _remote_leaf(fs: Any, info: dict[str, Any], relative: str, name: str) -> _Leaf | None:
    """What one object is; None for an empty folder marker (a key ending in a slash)."""
    if not name:
        if int(info.get("size") or 0) > 0:  # a key ending in "/" that holds bytes: said, unread
            reason = "an object whose key ends in '/' (a folder marker) holds data; not read"
            return SkippedEntry(relative_path=_display(relative), reason=reason)
        return None
    problem = _name_problem(name, folder=False)
    if problem is not None:
        return SkippedEntry(relative_path=_display(relative), reason=problem)
    kind = info.get("type") or "file"
    if kind == "directory":
        return None
    if kind != "file":
        reason = f"not a regular file ({kind})"
        return SkippedEntry(relative_path=_display(relative), reason=reason)
    size = int(info.get("size") or 0)
    return _File(
        relative_path=relative,
        size=size,
        fingerprint=object_fingerprint(info),
        is_link=False,
        read_head=partial(_read_remote_head, fs, str(info["name"]), size),
    )


def _remote_leaves(
    root_url: str, skip_dir: str | None = None, options: StorageOptions | None = None
) -> Iterator[tuple[str, _Leaf]]:
    """Every object under ``root_url`` by key; a bad or hidden folder is said once."""
    fs, root_path = url_to_fs(root_url, options)
    root_path = root_path.rstrip("/")
    skipped_prefix: str | None = None
    for info in _remote_entries(fs, root_path):
        name = str(info["name"])
        if not name.startswith(root_path + "/"):
            continue  # the prefix itself
        relative = name[len(root_path) + 1 :]  # "a//b" keeps its empty segment: refused below
        if skipped_prefix is not None and relative.startswith(skipped_prefix):
            continue
        parts = relative.split("/")
        if len(parts) > 1 and parts[0] == skip_dir:
            skipped_prefix = skip_dir + "/"
            continue
        for index, part in enumerate(parts[:-1]):
            problem = _name_problem(part, folder=True)
            if problem is not None:
                folder = "/".join(parts[: index + 1])
                skipped_prefix = folder + "/"
                yield skipped_prefix, SkippedEntry(relative_path=_display(folder), reason=problem)
                break
        else:
            leaf = _remote_leaf(fs, info, relative, parts[-1])
            if leaf is not None:
                yield relative, leaf


# --- images and their sidecars -----------------------------------------------------------------


def _content_kind(head: bytes) -> str:
    """What a file that is not an image holds, as far as its first bytes tell."""
    if not head:
        return "empty file"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"PK\x03\x04"):
        return "ZIP archive"
    if head[4:8] == b"ftyp":
        return "ISO media, e.g. a video"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.end >= len(head) and exc.reason == "unexpected end of data":
                return "text"  # a character cut by the read
        else:
            return "text"
    return "unrecognised content"


@dataclass(frozen=True)
class _Sniffed:
    """What a file's first bytes say: an image format, or why it is not processed."""

    image_format: str | None
    reason: str = ""
    readable: bool = True


def _sniff(file: _File, *, caption: bool) -> _Sniffed:
    """Read the file's first ``SNIFF_BYTES`` bytes and tell whether they start an image."""
    try:
        head = file.read_head()
    except Exception as exc:  # one unreadable entry never stops the listing
        return _Sniffed(None, f"could not be read ({_why(exc)})", readable=False)
    image_format = sniff_image_format(head)
    if image_format is not None:
        return _Sniffed(image_format)
    what = "caption sidecar without an image" if caption else _content_kind(head)
    return _Sniffed(None, f"not an image ({what})")


def _classify(files: list[_File]) -> list[ImageRef | SkippedEntry | None]:
    """Verdicts for the files of one folder with one stem: images with their sidecars, the
    sidecars themselves (None: they travel inside their images), and what is skipped."""
    images: list[int] = []
    captions: list[int] = []
    reasons: dict[int, str] = {}
    for index, file in enumerate(files):
        suffix = _split_suffix(file.relative_path.rpartition("/")[2])[1].lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(index)
        elif suffix in CAPTION_SUFFIXES:
            captions.append(index)
        else:
            sniffed = _sniff(file, caption=False)
            if sniffed.image_format is None:
                reasons[index] = sniffed.reason
            else:
                images.append(index)
    if not images:  # a caption without an image may still be an image under a caption name
        unreadable: set[int] = set()
        for index in captions:
            sniffed = _sniff(files[index], caption=True)
            if sniffed.image_format is not None:
                images.append(index)
            else:
                reasons[index] = sniffed.reason
                if not sniffed.readable:
                    unreadable.add(index)
        if images:  # the other captions are its sidecars
            captions = [i for i in captions if i not in images and i not in unreadable]
            for index in captions:
                del reasons[index]
    verdicts: list[ImageRef | SkippedEntry | None] = [None] * len(files)
    sidecars: list[SidecarRef] = []
    for index in captions if images else ():
        file = files[index]
        if file.is_link:
            reasons[index] = "sidecar is a link; not copied"
        else:
            sidecars.append(
                SidecarRef(relative_path=file.relative_path, fingerprint=file.fingerprint)
            )
    sidecars.sort(key=lambda sidecar: sidecar.relative_path)
    for index in images:
        file = files[index]
        verdicts[index] = ImageRef(
            relative_path=file.relative_path,
            size_bytes=file.size,
            fingerprint=file.fingerprint,
            sidecars=tuple(sidecars),
        )
    for index, reason in reasons.items():
        file = files[index]
        verdicts[index] = SkippedEntry(
            relative_path=file.relative_path, reason=reason, fingerprint=file.fingerprint
        )
    return verdicts


@dataclass
class _Group:
    """The files of one folder with one stem, and the queue slots their verdicts go to."""

    files: list[_File] = field(default_factory=list)
    slots: list[list[Any]] = field(default_factory=list)

    def close(self) -> None:
        for slot, verdict in zip(self.slots, _classify(self.files), strict=True):
            slot[0] = verdict


def _grouped(leaves: Iterable[tuple[str, _Leaf]]) -> Iterator[ImageRef | SkippedEntry]:
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
            prefix = _join(folder, _split_suffix(name)[0]) + "."
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


# --- public ------------------------------------------------------------------------------------


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
        leaves = _local_leaves(local_path(root_url))
    else:
        leaves = _remote_leaves(root_url, None, options)
    for entry in _grouped(leaves):
        if isinstance(entry, SkippedEntry):
            logger.debug("skipping %s: %s", entry.relative_path, entry.reason)
        yield entry


def list_dataset(root_url: str, options: StorageOptions | None = None) -> Iterator[ImageRef]:
    """The images under ``root_url`` with fingerprints and caption sidecars, in path order.

    ``scan_dataset`` without the skipped entries.
    """
    for entry in scan_dataset(root_url, options):
        if isinstance(entry, ImageRef):
            yield entry


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
        leaves = _local_leaves(root, skip_dir)
    else:
        leaves = _remote_leaves(root_url, skip_dir, options)
    fingerprints: dict[str, str] = {}
    for _key, leaf in leaves:
        if isinstance(leaf, _File):
            fingerprints[leaf.relative_path] = leaf.fingerprint
        else:
            logger.debug("not listing %s: %s", leaf.relative_path, leaf.reason)
    return fingerprints
