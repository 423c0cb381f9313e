"""Which files of one folder and stem are images, which are their caption sidecars, and why
the rest are skipped.

A regular file whose extension names an image format (``formats.SUFFIX_FORMATS``: ``.jpg``,
``.jfif``, ``.bmp``, ``.heic``...) is an image without being read; the decoder refuses it later
if it is not one. Any other file that is not a caption sidecar of an image is sniffed: its first
``SNIFF_BYTES`` bytes are read (locally one small read, on an object store one ranged GET) and
an image format there makes it an image (an extension-less ``IMG_0001``, ``photo.jpg.bak``).
A caption sidecar that is a link is never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from anon_tasks.core.formats import SUFFIX_FORMATS, sniff_image_format
from anon_tasks.core.records import ImageRef, SidecarRef, SkippedEntry
from anon_tasks.datasets.entries import ListedFile, skip_cause, split_suffix

__all__ = ["CAPTION_SUFFIXES", "IMAGE_SUFFIXES", "classify"]

#: Extensions that make a regular file an image without reading it (case-insensitive).
IMAGE_SUFFIXES: Final = frozenset(SUFFIX_FORMATS)
#: Caption sidecars copied beside their image (same stem), as LoRA trainers expect.
CAPTION_SUFFIXES: Final = (".txt", ".caption", ".json")


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


def _sniff(file: ListedFile, *, caption: bool) -> _Sniffed:
    """Read the file's first ``SNIFF_BYTES`` bytes and tell whether they start an image."""
    try:
        head = file.read_head()
    except Exception as exc:  # one unreadable entry never stops the listing
        return _Sniffed(None, f"could not be read ({skip_cause(exc)})", readable=False)
    image_format = sniff_image_format(head)
    if image_format is not None:
        return _Sniffed(image_format)
    what = "caption sidecar without an image" if caption else _content_kind(head)
    return _Sniffed(None, f"not an image ({what})")


def classify(files: list[ListedFile]) -> list[ImageRef | SkippedEntry | None]:
    """Verdicts for the files of one folder with one stem, in the order given.

    Args:
        files: The files of one folder whose names share a stem (``a``, ``a.jpg``, ``a.txt``).

    Returns:
        For each file: an ``ImageRef`` carrying the stem's sidecars, ``None`` for a sidecar
        (it travels inside its images), or a ``SkippedEntry`` that says why it is skipped.
    """
    images: list[int] = []
    captions: list[int] = []
    reasons: dict[int, str] = {}
    for index, file in enumerate(files):
        suffix = split_suffix(file.relative_path.rpartition("/")[2])[1].lower()
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
