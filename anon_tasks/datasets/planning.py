"""Which images a run must redo: those whose output is not already what this run would write.

An image is up to date when the previous manifest recorded it as written (or unchanged) under
the same render key, and its output in dest still has the fingerprint recorded then. Everything
the output depends on is in the render key, so nothing else needs checking, and nothing is read.

Racy files (as git calls them): a local fingerprint holds the file's status-change time, which
a copy cannot forge, but a file replaced within the same clock tick as the listing that
fingerprinted it can keep the old fingerprint. A row therefore records when its source was
listed, and a file whose status changed less than ``RACY_WINDOW_NS`` before that is never
trusted as unchanged: it is read again, and its bytes' digest decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from anon_tasks.core.records import ImageRef, ImageStatus, ManifestRow
from anon_tasks.datasets.manifest import unchanged_row

__all__ = ["RACY_WINDOW_NS", "is_racy", "is_up_to_date", "up_to_date_rows"]

#: Status changes this close to (or after) the listing make a fingerprint untrustworthy: local
#: file systems keep status-change times in clock ticks of a few milliseconds at most.
RACY_WINDOW_NS = 20_000_000
_CTIME = re.compile(r"(?:^|:)ctime_ns:(\d+)(?::|$)")


def is_racy(fingerprint: str, listed_at_ns: int | None) -> bool:
    """Whether a local file's fingerprint may not have seen its latest change.

    Fingerprints without a status-change time (object stores: ETags are content digests) are
    never racy; a row without a listing time (an older manifest) always is, for local files.
    """
    found = _CTIME.search(fingerprint)
    if found is None:
        return False
    if listed_at_ns is None:
        return True
    return int(found.group(1)) >= listed_at_ns - RACY_WINDOW_NS


def is_up_to_date(
    image: ImageRef,
    prior: ManifestRow | None,
    key: str,
    fingerprint_of: Callable[[str], str | None],
) -> bool:
    """Whether ``image``'s output in dest is already what a run with render ``key`` would write.

    Args:
        image: The source image.
        prior: Its row in the previous manifest, if any.
        key: The render key this run would give it.
        fingerprint_of: The current fingerprint of a file in dest by relative path (None when
            it is missing).
    """
    return (
        prior is not None
        and prior.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)
        and prior.render_key == key
        and not is_racy(image.fingerprint, prior.listed_at_ns)
        and prior.output is not None
        and prior.output_fingerprint is not None
        and fingerprint_of(prior.output) == prior.output_fingerprint
        and all(fingerprint_of(path) == recorded for path, recorded in prior.sidecars.items())
    )


def up_to_date_rows(
    images: Iterable[ImageRef],
    previous: Mapping[str, ManifestRow],
    output_fingerprints: Mapping[str, str],
    key_for: Callable[[ImageRef], str],
) -> dict[str, ManifestRow]:
    """The ``unchanged`` rows of the images that need no work, by source path.

    Args:
        images: This run's images.
        previous: The previous manifest's rows by source path.
        output_fingerprints: Fingerprints of the files now in dest, by relative path.
        key_for: The render key this run would give an image.
    """
    return {
        image.relative_path: unchanged_row(previous[image.relative_path])
        for image in images
        if is_up_to_date(
            image, previous.get(image.relative_path), key_for(image), output_fingerprints.get
        )
    }
