"""The ``anonymize-dataset`` flow: every image of a dataset anonymised into dest, with a manifest.

Use it from the CLI (``anonymize SOURCE DEST``), as a deployment, or as a subflow::

    from prefect import flow
    from anon_tasks.flows import anonymize_dataset

    @flow
    def prepare_training_data(raw: str, clean: str) -> None:
        summary = anonymize_dataset(raw, clean)
        ...
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque, quote

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.faces import faces_above
from anon_tasks.core.records import (
    ImageRef,
    ImageStatus,
    ManifestRow,
    RunSummary,
    ShardDetections,
    SkippedEntry,
)
from anon_tasks.core.settings import (
    BLOCK_SLUG,
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    RunSettings,
)
from anon_tasks.core.version import __version__
from anon_tasks.datasets.keys import render_key
from anon_tasks.datasets.listing import file_fingerprints
from anon_tasks.datasets.manifest import (
    DEFAULT_CACHE_DIR,
    MANIFEST_DIR,
    STAGING_DIR,
    manifest_parameters,
    manifest_url,
    read_recorded_rows,
    remove_journals,
    summary_url,
    write_journal,
    write_manifest,
)
from anon_tasks.datasets.outputs import produced_paths
from anon_tasks.datasets.paths import check_dataset_paths
from anon_tasks.datasets.planning import up_to_date_rows
from anon_tasks.datasets.sharding import partition_of, stable_shards
from anon_tasks.detection.devices import available_devices, device_slots
from anon_tasks.detection.model import load_model_file
from anon_tasks.orchestration.tasks import (
    MaskedShard,
    detect_faces,
    mask_faces,
    remove_stale_outputs,
    scan_source,
    storage_options_for,
    write_images,
)
from anon_tasks.pipeline.memory import limit_heap_growth
from anon_tasks.pipeline.progress import report_progress
from anon_tasks.storage.files import (
    is_local,
    join_url,
    local_path,
    location_within,
    redact_url,
    remove_stale_staging_files,
    write_bytes_atomic,
)

__all__ = ["DATASET_EVENT", "announce_dataset", "anonymize_dataset", "check_paths", "finish_state"]

#: Event emitted when a dataset is done; its resource id is ``anon-tasks.dataset.<dest>``.
DATASET_EVENT = "anon-tasks.dataset.anonymized"


class _WithoutRawParameters(logging.Filter):
    """Drops the raw parameters Prefect logs when a flow's parameters fail validation.

    Prefect appends ``Parameters: {...}`` to that error line: a refused secret in
    ``run.storage_options`` would be repeated there. The validation errors themselves are
    already free of secret values (``anon_tasks.core.settings`` hides them).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Parameter validation failed" in message and "\nParameters:" in message:
            record.msg = message.split("\nParameters:", 1)[0] + "\nParameters: <not shown>"
            record.args = None
        return True


logging.getLogger("prefect.flows").addFilter(_WithoutRawParameters())


def check_paths(source: str, dest: str, run: RunSettings) -> None:
    """Refuse, before any work, a run that would read nothing or write into the source.

    Raises:
        ConfigurationError: See ``anon_tasks.datasets.paths.check_dataset_paths``; names the field.
    """
    check_dataset_paths(
        source,
        dest,
        result_storage=run.result_storage,
        options=storage_options_for(run.storage_options, run.credentials_block),
    )
    if run.result_storage is not None and BLOCK_SLUG.match(run.result_storage):
        _check_block_storage(run.result_storage, source)


def _block_location(slug: str) -> str | None:
    """Where a storage block keeps its files, as a path or URL; None when it cannot be told."""
    from prefect.blocks.core import Block

    try:
        block = Block.load(slug)
    except (ValueError, KeyError) as exc:  # Prefect: no such block type or document
        raise ConfigurationError(
            f"result_storage={slug!r} names no saved block ({type(exc).__name__}); for a local "
            f"folder write './{slug}' or an absolute path",
            field="result_storage",
        ) from None
    basepath = getattr(block, "basepath", None)
    if isinstance(basepath, str) and basepath:
        return basepath
    bucket = getattr(block, "bucket_name", None) or getattr(block, "bucket", None)
    if isinstance(bucket, str) and bucket:
        scheme = "gs" if "gcs" in type(block).__name__.lower() else "s3"
        folder = str(getattr(block, "bucket_folder", "") or "").strip("/")
        return f"{scheme}://{bucket}/{folder}".rstrip("/")
    return None


def _check_block_storage(slug: str, source: str) -> None:
    """A result storage block must store outside the source, and say where it stores."""
    location = _block_location(slug)
    if location is None:
        raise ConfigurationError(
            f"result_storage={slug!r}: cannot tell where this block stores files, so it cannot "
            "be checked to lie outside the source; give a path or URL instead",
            field="result_storage",
        )
    if location_within(location, source) or location_within(source, location):
        raise ConfigurationError(
            f"result_storage={slug!r} stores in {redact_url(location)!r}, which overlaps "
            f"source={redact_url(source)!r}: the source is never written",
            field="result_storage",
        )


def _result_storage(dest: str, settings: RunSettings) -> str | None:
    """The result storage for cached detections, as a Prefect block slug.

    A block slug (``s3-bucket/my-cache``) is used as it is; a path or URL is saved once as a
    block named after it, since Prefect needs result storage persisted server-side.
    """
    location = settings.result_storage
    if location is not None and BLOCK_SLUG.match(location):
        return location
    if location is None:
        if not is_local(dest):
            return None  # Prefect's default result storage
        location = str(local_path(dest).resolve() / DEFAULT_CACHE_DIR)
    name = "anon-tasks-cache-" + hashlib.sha256(location.encode()).hexdigest()[:16]
    if is_local(location):
        Path(local_path(location)).mkdir(parents=True, exist_ok=True)
        block: LocalFileSystem | RemoteFileSystem = LocalFileSystem(
            basepath=str(local_path(location))
        )
    else:
        # Plain options only (an endpoint, a profile): secrets stay with the credential chain.
        block = RemoteFileSystem(basepath=location, settings=dict(settings.storage_options))
    block.save(name, overwrite=True)
    return f"{block.get_block_type_slug()}/{name}"


class _Progress:
    """The run's progress artifact and listeners, updated at most every second."""

    def __init__(self, *, total: int, done: int) -> None:
        self.total, self.done = total, done
        self._last = 0.0
        self._artifact_id = create_progress_artifact(
            progress=self._percent(), description="Images anonymised"
        )

    def _percent(self) -> float:
        return 100.0 * self.done / max(1, self.total)

    def advance(self, images: int) -> None:
        self.done += images
        report_progress(self.done, self.total)
        if time.monotonic() - self._last >= 1.0:
            self.finish()

    def finish(self) -> None:
        self._last = time.monotonic()
        if self._artifact_id is not None:
            update_progress_artifact(self._artifact_id, progress=self._percent())


def _was_cached(future: PrefectFuture[ShardDetections]) -> bool:
    state = future.state
    return state.name == "Cached"


def _summary_table(summary: RunSummary) -> list[dict[str, object]]:
    fields = (
        "images_total",
        "images_written",
        "images_unchanged",
        "images_failed",
        "images_skipped",
        "images_removed",
        "images_inferred",
        "images_read",
        "faces_found",
        "shards",
        "seconds",
    )
    return [{"counter": name, "value": getattr(summary, name)} for name in fields]


def _report(
    summary: RunSummary, detection: DetectionSettings, masking: MaskSettings, model_sha: str
) -> str:
    failed = "\n".join(f"- `{name}`" for name in summary.failed_images[:50]) or "none"
    return (
        f"# Anonymised `{summary.source}` into `{summary.dest}`\n\n"
        f"| parameter | value |\n|---|---|\n"
        f"| method | {masking.method.value} |\n| threshold | {detection.threshold} |\n"
        f"| mask_scale | {masking.mask_scale} |\n| ellipse | {masking.ellipse} |\n"
        f"| mosaic_size | {masking.mosaic_size} |\n"
        f"| model | CenterFace `{model_sha[:16]}…` ({detection.model_path or 'bundled'}) |\n"
        f"| anon-tasks | {__version__} |\n\n"
        f"{summary.images_written} written, {summary.images_unchanged} unchanged, "
        f"{summary.images_failed} failed, {summary.images_skipped} skipped, "
        f"{summary.images_removed} removed, {summary.faces_found} faces, "
        f"{summary.images_inferred} images inferred in {summary.seconds:.1f} s.\n\n"
        f"Manifest: `{summary.manifest}`\n\nFailed images:\n{failed}\n"
    )


@dataclass
class _Plan:
    """What a run has to do: shards to process, rows of images already up to date, entries
    skipped, and the previous rows of images no longer in the source."""

    images: list[ImageRef]
    shards: list[list[ImageRef]]
    todo: list[list[ImageRef]]
    up_to_date_rows: list[ManifestRow]
    previous: dict[str, ManifestRow]
    skipped: list[SkippedEntry]
    gone: list[ManifestRow]
    listed_at_ns: int
    #: The source listed nothing at all (before any partition was taken).
    source_empty: bool = False
    #: What any manifest or journal in dest records as written, by source (this partition's).
    recorded: dict[str, list[ManifestRow]] = field(default_factory=dict)
    #: Journals of stopped runs (this partition's): deleted once this run's manifest holds all.
    journals: list[str] = field(default_factory=list)


def _plan(
    source: str,
    dest: str,
    detection: DetectionSettings,
    masking: MaskSettings,
    output: OutputSettings,
    run: RunSettings,
    model_sha: str,
    options: dict[str, Any],
) -> _Plan:
    if is_local(dest):
        remove_stale_staging_files(join_url(dest, STAGING_DIR))
    listed_at_ns = time.time_ns()
    listing = scan_source(source, run)

    def mine(path: str) -> bool:
        """Whether ``path`` belongs to this run's partition (every path, unpartitioned)."""
        return run.partition is None or partition_of(path, run.partition[1]) == run.partition[0]

    images = [image for image in listing.images if mine(image.relative_path)]
    skipped = [entry for entry in listing.skipped if mine(entry.relative_path)]
    manifests, journals = read_recorded_rows(dest, options)
    own_manifest = manifest_url(dest, run.partition)
    previous = {
        row.source: row
        for url, rows in manifests.items()
        if location_within(url, own_manifest, options)
        for row in rows
    }
    manifest_rows = [row for rows in manifests.values() for row in rows]
    own_journals = [url for url, rows in journals.items() if all(mine(r.source) for r in rows)]
    journal_rows = [row for rows in journals.values() for row in rows if mine(row.source)]
    # A stopped run's journals are newer than the manifest: what they record is in dest now.
    previous.update((row.source, row) for row in journal_rows)
    recorded: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in [*manifest_rows, *journal_rows]:  # every layout: plain, any partition count
        if mine(row.source) and row.output is not None:
            recorded[row.source].append(row)
    listed = {image.relative_path for image in images}
    gone = [row for path, rows in recorded.items() if path not in listed for row in rows]
    up_to_date = up_to_date_rows(
        images,
        previous,
        file_fingerprints(dest, skip_dir=MANIFEST_DIR, options=options),
        lambda image: render_key(
            image,
            model_sha256=model_sha,
            detection=detection,
            masking=masking,
            output=output,
            run=run,
        ),
    )
    shards = stable_shards(images, [image.relative_path for image in images], run.shard_size)
    todo, done = [], []
    for shard in shards:
        stale = any(image.relative_path not in up_to_date for image in shard)
        (todo if stale else done).append(shard)
    rows = [up_to_date[image.relative_path] for shard in done for image in shard]
    source_empty = not listing.images and not listing.skipped
    return _Plan(
        images,
        shards,
        todo,
        rows,
        previous,
        skipped,
        gone,
        listed_at_ns,
        source_empty,
        recorded=dict(recorded),
        journals=own_journals,
    )


def _refuse_to_empty_dest(plan: _Plan, source: str) -> None:
    """A source that lists nothing while the last run wrote outputs is refused, not mirrored:
    an unreachable or mistyped source must never delete a whole dataset's outputs."""
    written = [row for row in plan.previous.values() if row.output is not None]
    if plan.source_empty and written:
        raise ConfigurationError(
            f"source={redact_url(source)!r} lists no entries, but the previous run wrote "
            f"{len(written)} output(s) to dest: refusing to delete them all (to start over, "
            "delete dest or its _anonymize/manifest.jsonl)",
            field="source",
        )


def _remove_orphans(
    rows: list[ManifestRow], plan: _Plan, source: str, dest: str, run: RunSettings
) -> list[ManifestRow]:
    """Delete what earlier runs wrote for this run's images and no row now records (an image
    that failed, a sidecar no longer copied); a failed row then says its output went."""
    redone = [
        earlier
        for row in rows
        if row.status in (ImageStatus.FAILED, ImageStatus.WRITTEN)
        for earlier in plan.recorded.get(row.source, [])
    ]
    if not redone:
        return rows
    keep = produced_paths(
        row for row in rows if row.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)
    )
    removed = remove_stale_outputs(redone, source, dest, quote(keep), run)
    return [
        row.model_copy(update={"error": f"{row.error}; the output of an earlier run was removed"})
        if row.status is ImageStatus.FAILED and row.source in removed
        else row
        for row in rows
    ]


def _skipped_row(entry: SkippedEntry, parameters: dict[str, object], model_sha: str) -> ManifestRow:
    return ManifestRow(
        source=entry.relative_path,
        output=None,
        status=ImageStatus.SKIPPED,
        error=entry.reason,
        source_fingerprint=entry.fingerprint,
        parameters=parameters,
        model_sha256=model_sha,
        package_version=__version__,
    )


@dataclass
class _Outcome:
    rows: list[ManifestRow] = field(default_factory=list)
    images_inferred: int = 0
    images_read: int = 0
    devices: set[str] = field(default_factory=set)
    #: Journals this run wrote, deleted once its manifest is written.
    journals: list[str] = field(default_factory=list)
    #: Detect-only runs (method none) write no rows: their counts are kept here.
    faces_found: int = 0
    images_failed: list[str] = field(default_factory=list)


#: Shards submitted ahead per device: one detecting while the previous one is masked.
SHARDS_IN_FLIGHT = 2


@dataclass(frozen=True)
class _ShardRun:
    """The three task runs of one shard, and its image count."""

    found: PrefectFuture[ShardDetections]
    masked: PrefectFuture[MaskedShard] | None
    written: PrefectFuture[list[ManifestRow]] | None
    size: int


def _process(
    plan: _Plan,
    source: str,
    dest: str,
    detection: DetectionSettings,
    masking: MaskSettings,
    output: OutputSettings,
    run: RunSettings,
) -> _Outcome:
    """Detect, mask and write every stale shard; shards spread over the available devices."""
    outcome = _Outcome(rows=list(plan.up_to_date_rows))
    progress = _Progress(total=len(plan.images), done=len(plan.up_to_date_rows))
    options = storage_options_for(run.storage_options, run.credentials_block)
    detect = detect_faces.with_options(result_storage=_result_storage(dest, run))
    devices = available_devices(detection.device)
    # Per device: one thread runs the model while another masks and encodes the previous
    # shard and a third writes; never an unbounded pool. At most SHARDS_IN_FLIGHT shards per
    # device are submitted at a time, and each is released once written, so memory (decoded
    # pixels, encoded bytes, futures) stays bounded whatever the dataset's size.
    window = SHARDS_IN_FLIGHT * len(devices)
    in_flight: deque[_ShardRun] = deque()

    def collect(shard_run: _ShardRun) -> None:
        # Upstream first: a failed detection surfaces as its own error, not as a downstream
        # task that never left Pending.
        detections = shard_run.found.result()
        if shard_run.masked is None or shard_run.written is None:  # method none: detect only
            outcome.faces_found += sum(
                len(faces_above(found.faces, detection.threshold)) for found in detections.images
            )
            outcome.images_failed.extend(
                found.image.relative_path for found in detections.images if found.error
            )
        else:
            outcome.images_read += shard_run.masked.result().images_read
            shard_rows = [
                row
                if row.status is ImageStatus.UNCHANGED
                else row.model_copy(update={"listed_at_ns": plan.listed_at_ns})
                for row in shard_run.written.result()
            ]
            outcome.rows.extend(shard_rows)
            # Until the manifest exists, a journal says what this shard put in dest.
            journal = write_journal(
                dest,
                [row for row in shard_rows if row.status is ImageStatus.WRITTEN],
                options,
                protected_root=source,
            )
            if journal is not None:
                outcome.journals.append(journal)
        if not _was_cached(shard_run.found):
            outcome.images_inferred += detections.images_inferred
            outcome.images_read += detections.images_read
            if detections.device:
                outcome.devices.add(detections.device)
        progress.advance(shard_run.size)

    # Largest shards first: nothing overlaps the last shard's masking and writing, so the
    # smallest one goes last.
    ordered = sorted(plan.todo, key=len, reverse=True)
    with ThreadPoolTaskRunner(max_workers=3 * len(devices)) as runner:
        for index, shard in enumerate(ordered):
            found = runner.submit(
                detect,
                {
                    "images": shard,
                    "source": source,
                    "detection": detection,
                    "output": output,
                    "device_hint": index,
                    "run": run,
                },
            )
            if masking.method is AnonymizeMethod.NONE:  # detect only: nothing masked or written
                in_flight.append(_ShardRun(found, None, None, len(shard)))
                if len(in_flight) >= window:
                    collect(in_flight.popleft())
                continue
            shard_previous = {
                i.relative_path: plan.previous[i.relative_path]
                for i in shard
                if i.relative_path in plan.previous
            }
            # opaque/quote: resolve futures without walking thousands of face values (slow).
            masked = runner.submit(
                mask_faces,
                {
                    "detections": opaque(found),
                    "source": source,
                    "dest": dest,
                    "detection": detection,
                    "masking": masking,
                    "output": output,
                    "run": run,
                    "previous": quote(shard_previous),
                },
            )
            written = runner.submit(
                write_images,
                {
                    "masked": opaque(masked),
                    "source": source,
                    "dest": dest,
                    "detection": detection,
                    "masking": masking,
                    "run": run,
                },
            )
            in_flight.append(_ShardRun(found, masked, written, len(shard)))
            if len(in_flight) >= window:
                collect(in_flight.popleft())
        while in_flight:
            collect(in_flight.popleft())
    progress.finish()
    return outcome


def _publish(
    summary: RunSummary,
    detection: DetectionSettings,
    masking: MaskSettings,
    model_sha: str,
    partition: tuple[int, int] | None,
    options: dict[str, Any],
) -> None:
    """Summary file, UI artifacts and the completion event (for a detect-only run, the
    artifacts alone: it leaves dest as it is)."""
    detect_only = masking.method is AnonymizeMethod.NONE
    if not detect_only:
        write_bytes_atomic(
            summary_url(summary.dest, partition),
            summary.model_dump_json(indent=2).encode(),
            options,
            protected_root=summary.source,
        )
    create_table_artifact(table=_summary_table(summary), description="anonymize-dataset summary")
    create_markdown_artifact(
        markdown=_report(summary, detection, masking, model_sha), description="Run report"
    )
    if partition is None and not detect_only:  # a partitioned run's parent announces it
        announce_dataset(summary)


def announce_dataset(summary: RunSummary) -> None:
    """Emit DATASET_EVENT for ``summary.dest``, so automations can start the next step."""
    emit_event(
        event=DATASET_EVENT,
        resource={
            "prefect.resource.id": f"anon-tasks.dataset.{summary.dest}",
            "anon-tasks.dest": summary.dest,
        },
        payload=summary.model_dump(mode="json", exclude={"failed_images"}),
    )


def finish_state(summary: RunSummary, allow_failures: bool) -> State:
    """Completed with the summary, or Failed naming the images that could not be anonymised."""
    failed = summary.failed_images
    if failed and not allow_failures:
        listed = ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else "")
        return Failed(
            message=f"{len(failed)} image(s) could not be anonymised: {listed}", data=summary
        )
    return Completed(message="dataset anonymised", data=summary)


@flow(
    name="anonymize-dataset",
    description="Find faces in every image of a dataset with CenterFace and hide them.",
    validate_parameters=True,
)
def anonymize_dataset(
    source: str,
    dest: str,
    detection: DetectionSettings = DetectionSettings(),  # noqa: B008 (frozen: safe to share)
    masking: MaskSettings = MaskSettings(),  # noqa: B008
    output: OutputSettings = OutputSettings(),  # noqa: B008
    run: RunSettings = RunSettings(),  # noqa: B008
) -> RunSummary | State:
    """Anonymise every image under ``source`` into ``dest``, keeping relative paths.

    Args:
        source: Folder or fsspec URL of the dataset; never modified.
        dest: Folder or fsspec URL for the anonymised copy and ``_anonymize/manifest.jsonl``.
        detection: Threshold, model and device.
        masking: Method (blur, solid, mosaic, none), mask scale, ellipse, mosaic size.
        output: JPEG quality, metadata policy and pixel limit.
        run: Shard size, failure policy, caption note, result storage and partition.

    Returns:
        The run summary. When images failed and ``run.allow_failures`` is off, the run ends
        Failed, naming them, after every other image has been written.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    limit_heap_growth()  # resident memory stays flat over thousands of images
    check_paths(source, dest, run)
    device_slots()  # a malformed ANON_TASKS_DEVICE_SLOTS fails here, before any task
    model_sha = load_model_file(detection.model_path).sha256
    options = storage_options_for(run.storage_options, run.credentials_block)
    plan = _plan(source, dest, detection, masking, output, run, model_sha, options)
    detect_only = masking.method is AnonymizeMethod.NONE
    if detect_only:  # every image is searched; nothing in dest is written or replaced
        plan.todo, plan.up_to_date_rows = plan.shards, []
    logger.info(
        "%d image(s)%s in %d shard(s): %d up to date, %d shard(s) to process, %d skipped%s",
        len(plan.images),
        f" in partition {run.partition_index}/{run.partition_count}" if run.partition else "",
        len(plan.shards),
        len(plan.up_to_date_rows),
        len(plan.todo),
        len(plan.skipped),
        " (method none: detection only, dest is left as it is)" if detect_only else "",
    )
    _refuse_to_empty_dest(plan, source)
    removed_gone: dict[str, tuple[str, ...]] = {}
    if plan.gone and not detect_only:
        # Before any write: a file may now stand where a folder of outputs was, or the reverse.
        keep = {image.relative_path for image in plan.images} | {
            sidecar.relative_path for image in plan.images for sidecar in image.sidecars
        }
        removed_gone = remove_stale_outputs(plan.gone, source, dest, quote(keep), run)
    outcome = _process(plan, source, dest, detection, masking, output, run)
    rows = outcome.rows
    manifest = None
    if not detect_only:
        rows = _remove_orphans(rows, plan, source, dest, run)
        rows.extend(
            plan.recorded[image][-1].model_copy(
                update={
                    "status": ImageStatus.REMOVED,
                    "output": None,
                    "output_fingerprint": None,
                    "sidecars": {},
                    "faces": (),
                    "error": "its source is gone: " + ", ".join(paths) + " deleted from dest",
                }
            )
            for image, paths in removed_gone.items()
        )
        parameters = manifest_parameters(detection, masking)
        rows.extend(_skipped_row(entry, parameters, model_sha) for entry in plan.skipped)
        manifest = write_manifest(dest, rows, run.partition, options, protected_root=source)
        remove_journals([*outcome.journals, *plan.journals], options)
    failed = [row.source for row in rows if row.status is ImageStatus.FAILED]
    summary = RunSummary(
        source=source,
        dest=dest,
        images_total=len(plan.images),
        images_written=sum(1 for row in rows if row.status is ImageStatus.WRITTEN),
        images_unchanged=sum(1 for row in rows if row.status is ImageStatus.UNCHANGED),
        images_failed=len(failed) + len(outcome.images_failed),
        images_skipped=len(plan.skipped),
        images_removed=sum(1 for row in rows if row.status is ImageStatus.REMOVED),
        images_inferred=outcome.images_inferred,
        images_read=outcome.images_read,
        faces_found=sum(len(row.faces) for row in rows) + outcome.faces_found,
        shards=len(plan.shards),
        seconds=round(time.perf_counter() - started, 3),
        failed_images=tuple(sorted(failed + outcome.images_failed)),
        manifest=manifest,
        devices=tuple(sorted(outcome.devices)),
        partition=f"{run.partition_index}/{run.partition_count}" if run.partition else None,
    )
    _publish(summary, detection, masking, model_sha, run.partition, options)
    logger.info(
        "%d written, %d unchanged, %d failed, %d skipped, %d removed, %d faces; "
        "model ran on %d image(s)%s",
        summary.images_written,
        summary.images_unchanged,
        summary.images_failed,
        summary.images_skipped,
        summary.images_removed,
        summary.faces_found,
        summary.images_inferred,
        f" ({', '.join(summary.devices)})" if summary.devices else "",
    )
    return finish_state(summary, run.allow_failures)
