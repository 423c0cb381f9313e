"""A run's plan: which images it must redo, and what dest holds that it may have to remove.

An image must be redone unless its output is already what this run would write.

An image is up to date when the previous manifest recorded it as written (or unchanged) under
the same render key, its output in dest still has the fingerprint recorded then, and this run's
threshold masks exactly the faces that output has masked (``masks_hold``). Everything else the
output depends on is in the render key, so nothing else needs checking, and nothing is read.

Racy files (as git calls them): a local fingerprint holds the file's status-change time, which
a copy cannot forge, but a file replaced within the same clock tick as the listing that
fingerprinted it can keep the old fingerprint. A row therefore records when its source was
listed, and a file whose status changed less than ``RACY_WINDOW_NS`` before that is never
trusted as unchanged: it is read again, and its bytes' digest decides.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from anon_tasks.core.records import ImageRef, ImageStatus, ManifestRow, SkippedEntry
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.listing import file_fingerprints
from anon_tasks.datasets.manifest import (
    MANIFEST_DIR,
    manifest_url,
    read_recorded_rows,
    unchanged_row,
)
from anon_tasks.datasets.sharding import partition_of, size_weight, stable_shards
from anon_tasks.storage.locations import location_within
from anon_tasks.storage.resolved import ResolvedStorage

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "RACY_WINDOW_NS",
    "RunPlan",
    "is_racy",
    "is_up_to_date",
    "masks_hold",
    "plan_run",
    "up_to_date_rows",
]

#: Status changes this close to (or after) the listing make a fingerprint untrustworthy: local
#: file systems keep status-change times in clock ticks of a few milliseconds at most.
RACY_WINDOW_NS = 20_000_000
#: Typical images per shard when ``run.shard_size`` is unset (weighted by file size).
DEFAULT_SHARD_SIZE = 32
_CTIME = re.compile(r"(?:^|:)ctime_ns:(\d+)(?::|$)")
#: Manifest rows keep scores to 4 decimals: a candidate recorded within this of a threshold
#: may lie on either side of it.
SCORE_ROUNDING = 1e-4


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


def masks_hold(prior: ManifestRow, threshold: float) -> bool:
    """Whether ``threshold`` masks exactly the faces ``prior``'s output has masked.

    The row lists every candidate above its ``score_floor``: the masked faces and the near
    misses. The masks hold when that floor is at or under ``threshold`` (so no unlisted
    candidate can be above it), every masked face scores above it and every near miss at or
    under it, each by more than the manifest's rounding. Anything less certain renders again:
    a row without a floor (written before it was recorded), a candidate on the line.
    """
    floor = prior.score_floor
    return (
        floor is not None
        and floor <= threshold
        and all(face.score - SCORE_ROUNDING > threshold for face in prior.faces)
        and all(miss.score + SCORE_ROUNDING <= threshold for miss in prior.near_misses)
    )


def is_up_to_date(
    image: ImageRef,
    prior: ManifestRow | None,
    key: str,
    threshold: float,
    fingerprint_of: Callable[[str], str | None],
) -> bool:
    """Whether ``image``'s output in dest is already what a run with render ``key`` and
    ``threshold`` would write.

    Args:
        image: The source image.
        prior: Its row in the previous manifest, if any.
        key: The render key this run would give it.
        threshold: This run's threshold (``masks_hold``).
        fingerprint_of: The current fingerprint of a file in dest by relative path (None when
            it is missing).
    """
    return (
        prior is not None
        and prior.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)
        and prior.render_key == key
        and masks_hold(prior, threshold)
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
    threshold: float,
) -> dict[str, ManifestRow]:
    """The ``unchanged`` rows of the images that need no work, by source path.

    Args:
        images: This run's images.
        previous: The previous manifest's rows by source path.
        output_fingerprints: Fingerprints of the files now in dest, by relative path.
        key_for: The render key this run would give an image.
        threshold: This run's threshold.
    """
    return {
        image.relative_path: unchanged_row(previous[image.relative_path], threshold)
        for image in images
        if is_up_to_date(
            image,
            previous.get(image.relative_path),
            key_for(image),
            threshold,
            output_fingerprints.get,
        )
    }


@dataclass
class RunPlan:
    """What a run has to do, decided before any work.

    Attributes:
        images: This run's images (its partition's, when partitioned).
        shards: All of them in content-defined shards.
        todo: The shards with at least one image to redo.
        up_to_date_rows: ``unchanged`` rows of the images of the other shards.
        previous: The latest row of each image, from this run's manifest and any journals.
        skipped: Entries of the source this run does not process.
        listed_at_ns: When the source was listed (rows record it; see ``is_racy``).
        source_empty: The source listed nothing at all, before any partition was taken.
        recorded: What any manifest or journal in dest records as written, by source path.
        journals: Journals of stopped runs (this partition's), deleted once this run's
            manifest holds what they record.
    """

    images: list[ImageRef]
    shards: list[list[ImageRef]]
    todo: list[list[ImageRef]]
    up_to_date_rows: list[ManifestRow]
    previous: dict[str, ManifestRow]
    skipped: list[SkippedEntry]
    listed_at_ns: int
    source_empty: bool = False
    recorded: dict[str, list[ManifestRow]] = field(default_factory=dict)
    journals: list[str] = field(default_factory=list)

    @property
    def gone(self) -> list[ManifestRow]:
        """Rows recording outputs of images no longer in the source."""
        listed = {image.relative_path for image in self.images}
        return [row for path, rows in self.recorded.items() if path not in listed for row in rows]


def plan_run(
    images: Sequence[ImageRef],
    skipped: Sequence[SkippedEntry],
    *,
    dest: str,
    render: RenderSpec,
    storage: ResolvedStorage,
    listed_at_ns: int,
) -> RunPlan:
    """Plan a run over a listing of the source, from what dest's manifests and files say.

    Args:
        images: The source's images (``list_source``), all partitions.
        skipped: The entries the listing skipped, all partitions.
        dest: The output root; its manifests, journals and file fingerprints are read.
        render: The run's render spec (its ``run`` names the partition and shard size).
        storage: How to reach dest.
        listed_at_ns: When the listing started.
    """
    run = render.run

    def mine(path: str) -> bool:
        """Whether ``path`` belongs to this run's partition (every path, unpartitioned)."""
        return run.partition is None or partition_of(path, run.partition[1]) == run.partition[0]

    own_images = [image for image in images if mine(image.relative_path)]
    own_skipped = [entry for entry in skipped if mine(entry.relative_path)]
    manifests, journals = read_recorded_rows(dest, storage.options)
    own_manifest = manifest_url(dest, run.partition)
    previous = {
        row.source: row
        for url, rows in manifests.items()
        if location_within(url, own_manifest, storage.options)
        for row in rows
    }
    own_journals = [url for url, rows in journals.items() if all(mine(r.source) for r in rows)]
    journal_rows = [row for rows in journals.values() for row in rows if mine(row.source)]
    # A stopped run's journals are newer than the manifest: what they record is in dest now.
    previous.update((row.source, row) for row in journal_rows)
    recorded: dict[str, list[ManifestRow]] = defaultdict(list)
    manifest_rows = [row for rows in manifests.values() for row in rows]
    for row in [*manifest_rows, *journal_rows]:  # every layout: plain, any partition count
        if mine(row.source) and row.output is not None:
            recorded[row.source].append(row)
    up_to_date = up_to_date_rows(
        own_images,
        previous,
        file_fingerprints(dest, skip_dir=MANIFEST_DIR, options=storage.options),
        render.key,
        render.detection.threshold,
    )
    shards = stable_shards(
        own_images,
        [image.relative_path for image in own_images],
        run.shard_size or DEFAULT_SHARD_SIZE,
        # Unset: sized from the files, so that thumbnails travel in large shards.
        None if run.shard_size else [size_weight(image.size_bytes) for image in own_images],
    )
    todo, done = [], []
    for shard in shards:
        stale = any(image.relative_path not in up_to_date for image in shard)
        (todo if stale else done).append(shard)
    return RunPlan(
        images=own_images,
        shards=shards,
        todo=todo,
        up_to_date_rows=[up_to_date[image.relative_path] for shard in done for image in shard],
        previous=previous,
        skipped=own_skipped,
        listed_at_ns=listed_at_ns,
        source_empty=not images and not skipped,
        recorded=dict(recorded),
        journals=own_journals,
    )
