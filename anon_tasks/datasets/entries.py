"""One listed entry: its name checked and shown safely, and the file a listing found.

Shared by the local walk, the object-store listing and the scan that groups them: which names
are processed (hidden names, control characters and backslashes are not), how a name that is
not valid UTF-8 is shown (``\\xNN`` escapes), and a skip reason's cause in words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from anon_tasks.core.errors import UnreadableFileError
from anon_tasks.core.records import SkippedEntry

__all__ = [
    "Leaf",
    "ListedFile",
    "display_name",
    "join_relative",
    "name_problem",
    "not_utf8",
    "skip_cause",
    "split_suffix",
]

#: Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ListedFile:
    """A regular file (or a link to one inside the source): an image candidate or a sidecar.

    Attributes:
        relative_path: Its path below the listed root, shown safely.
        size: Its size in bytes, from the listing.
        fingerprint: Its content fingerprint, from the listing.
        is_link: Whether it was reached through a link (never copied as a sidecar).
        read_head: Reads its first bytes (for sniffing), when called.
    """

    relative_path: str
    size: int
    fingerprint: str
    is_link: bool
    read_head: Callable[[], bytes] = field(repr=False, compare=False)


#: What a listing yields for an entry that is not a folder: a file, or why it is skipped.
Leaf = ListedFile | SkippedEntry


def display_name(name: str | bytes) -> str:
    """A name as it can be logged and stored: bad bytes and control characters as ``\\xNN``."""
    if isinstance(name, bytes):
        text = name.decode("utf-8", "backslashreplace")
    else:
        try:
            text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
            text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def join_relative(parent: str, name: str) -> str:
    """``parent/name``, or ``name`` at the root (``parent`` empty)."""
    return f"{parent}/{name}" if parent else name


def name_problem(name: str, *, folder: bool) -> str | None:
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
        return not_utf8(folder=folder)
    if name.startswith("."):
        return "hidden folder, not descended" if folder else "hidden file"
    if _CONTROL.search(name):
        return f"{kind} name contains a control character{tail}"
    if "\\" in name:
        return f"{kind} name contains a backslash{tail}"
    return None


def not_utf8(*, folder: bool) -> str:
    """The skip reason of a name that is not valid UTF-8."""
    if folder:
        return "folder name is not valid UTF-8; not descended"
    return "file name is not valid UTF-8"


def split_suffix(name: str) -> tuple[str, str]:
    """(stem, suffix) as ``PurePosixPath`` splits a name: ``a.tar.gz`` -> (``a.tar``, ``.gz``)."""
    dot = name.rfind(".")
    if 0 < dot < len(name) - 1:
        return name[:dot], name[dot:]
    return name, ""


def skip_cause(exc: BaseException) -> str:
    """A short cause for a skip reason: the OS error text, never a path or a URL."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, UnreadableFileError):
        return exc.reason
    return type(exc).__name__
