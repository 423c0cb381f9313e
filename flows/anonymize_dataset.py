"""The ``anonymize-dataset`` flow: every image of a dataset anonymised into dest, with a manifest.

Use it from the CLI (``anonymize SOURCE DEST``), as a deployment, or as a subflow::

    from prefect import flow
    from anon_tasks.flows import anonymize_dataset

    @flow
    def prepare_training_data(raw: str, clean: str) -> None:
        summary = anonymize_dataset(raw, clean)
        ...

The flow resolves its values once (the storage options, the render spec, a decoded-image cache
for the run), plans from dest's manifests, and runs three tasks per stale shard: detect, mask,
write. Everything else it calls is below it (``anon_tasks.datasets``, ``anon_tasks.orchestration``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
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
)
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    RunSettings,
)
from anon_tasks.core.urls import is_local, redact_url
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import (
    STAGING_DIR,
    remove_journals,
    write_journal,
    write_manifest,
)
from anon_tasks.datasets.outputs import produced_paths
from anon_tasks.datasets.planning import RunPlan, plan_run
from anon_tasks.datasets.rows import removed_row, skipped_row
from anon_tasks.detection.devices import available_devices, device_slots
from anon_tasks.orchestration.credentials import resolve_storage
from anon_tasks.orchestration.detection_task import detect_faces
from anon_tasks.orchestration.listing_tasks import scan_source
from anon_tasks.orchestration.masking_task import MaskedShard, mask_faces
from anon_tasks.orchestration.preflight import check_paths
from anon_tasks.orchestration.reporting import ProgressReport, finish_state, publish
from anon_tasks.orchestration.result_storage import result_storage_for
from anon_tasks.orchestration.review_task import write_review_page
from anon_tasks.orchestration.run_logs import library_logs_in_run
from anon_tasks.orchestration.writing_tasks import remove_stale_outputs, write_images
from anon_tasks.pipeline.decoded_cache import DecodedCache
from anon_tasks.pipeline.memory import limit_heap_growth
from anon_tasks.storage.locations import join_url
from anon_tasks.storage.resolved import ResolvedStorage
from anon_tasks.storage.writes import remove_stale_staging_files

__all__ = ["anonymize_dataset"]


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


def _refuse_to_empty_dest(plan: RunPlan, source: str) -> None:
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


@dataclass(frozen=True)
class _Run:
    """The values one flow run resolves once and hands to every shard."""

    source: str
    dest: str
    render: RenderSpec
    storage: ResolvedStorage
    decoded: DecodedCache


def _remove_orphans(rows: list[ManifestRow], plan: RunPlan, run: _Run) -> list[ManifestRow]:
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
    removed = remove_stale_outputs(redone, run.source, run.dest, quote(keep), run.storage)
    return [
        row.model_copy(update={"error": f"{row.error}; the output of an earlier run was removed"})
        if row.status is ImageStatus.FAILED and row.source in removed
        else row
        for row in rows
    ]


@dataclass
class _Outcome:
    rows: list[ManifestRow] = field(default_factory=list)
    images_inferred: int = 0
    images_read: int = 0
    devices: set[str] = field(default_factory=set)
    backends: set[str] = field(default_factory=set)
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


def _earlier_records(shard: list[ImageRef], plan: RunPlan) -> dict[str, str]:
    """Where earlier runs stored the candidates of this shard's images (by relative path)."""
    earlier = {}
    for image in shard:
        row = plan.previous.get(image.relative_path)
        if row is not None and row.detections_key is not None:
            earlier[image.relative_path] = row.detections_key
    return earlier


def _process(plan: RunPlan, run: _Run) -> _Outcome:
    """Detect, mask and write every stale shard; shards spread over the available devices."""
    render = run.render
    detect_only = render.masking.method is AnonymizeMethod.NONE
    outcome = _Outcome(rows=list(plan.up_to_date_rows))
    progress = ProgressReport(total=len(plan.images), done=len(plan.up_to_date_rows))
    detect = detect_faces.with_options(result_storage=result_storage_for(run.dest, render.run))
    devices = available_devices(render.detection.device)
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
                len(faces_above(found.faces, render.detection.threshold))
                for found in detections.images
            )
            outcome.images_failed.extend(
                found.image.relative_path for found in detections.images if found.error
            )
        else:
            outcome.images_read += shard_run.masked.result().images_read
            # New rows name the record holding their candidates, for the next run's changed
            # shards (``detect_faces``'s ``earlier``).
            fresh = {"listed_at_ns": plan.listed_at_ns, "detections_key": detections.record_key}
            shard_rows = [
                row if row.status is ImageStatus.UNCHANGED else row.model_copy(update=fresh)
                for row in shard_run.written.result()
            ]
            outcome.rows.extend(shard_rows)
            # Until the manifest exists, a journal says what this shard put in dest.
            journal = write_journal(
                run.dest,
                [row for row in shard_rows if row.status is ImageStatus.WRITTEN],
                run.storage.options,
                protected_root=run.source,
            )
            if journal is not None:
                outcome.journals.append(journal)
        if shard_run.found.state.name != "Cached":
            outcome.images_inferred += detections.images_inferred
            outcome.images_read += detections.images_read
            if detections.device:
                outcome.devices.add(detections.device)
            if detections.backend:
                outcome.backends.add(detections.backend)
        progress.advance(shard_run.size)

    # Largest shards first: nothing overlaps the last shard's masking and writing, so the
    # smallest one goes last.
    ordered = sorted(plan.todo, key=len, reverse=True)
    with ThreadPoolTaskRunner(max_workers=3 * len(devices)) as runner:
        for index, shard in enumerate(ordered):
            found = runner.submit(
                detect,
                {
                    "images": quote(shard),  # a list of values: nothing for Prefect to resolve
                    "source": run.source,
                    "detection": render.detection,
                    "output": render.output,
                    "device_hint": index,
                    "storage": run.storage,
                    # Pixels wait for the mask task; a detect-only run has none to wait for.
                    "decoded": None if detect_only else opaque(run.decoded),
                    "earlier": quote(_earlier_records(shard, plan)),
                },
            )
            if detect_only:  # nothing masked or written
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
                    "source": run.source,
                    "dest": run.dest,
                    "render": render,
                    "storage": run.storage,
                    "previous": quote(shard_previous),
                    "decoded": opaque(run.decoded),
                },
            )
            written = runner.submit(
                write_images,
                {
                    "masked": opaque(masked),
                    "source": run.source,
                    "dest": run.dest,
                    "render": render,
                    "storage": run.storage,
                },
            )
            in_flight.append(_ShardRun(found, masked, written, len(shard)))
            if len(in_flight) >= window:
                collect(in_flight.popleft())
        while in_flight:
            collect(in_flight.popleft())
    progress.finish()
    return outcome


def _summary(
    run: _Run, plan: RunPlan, rows: list[ManifestRow], outcome: _Outcome, **extra: object
) -> RunSummary:
    failed = [row.source for row in rows if row.status is ImageStatus.FAILED]
    settings = run.render.run
    return RunSummary(
        source=run.source,
        dest=run.dest,
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
        failed_images=tuple(sorted(failed + outcome.images_failed)),
        devices=tuple(sorted(outcome.devices)),
        backends=tuple(sorted(outcome.backends)),
        partition=(
            f"{settings.partition_index}/{settings.partition_count}" if settings.partition else None
        ),
        **extra,  # type: ignore[arg-type]
    )


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
        dest: Folder or fsspec URL for the anonymised copy and its manifest
            (_anonymize/manifest.jsonl).
        detection: Threshold, model and device.
        masking: Method (blur, solid, mosaic, none), mask scale, ellipse, mosaic size.
        output: JPEG quality, metadata policy and pixel limit.
        run: Shard size, failure policy, caption note, review page, result storage and
            partition.

    Returns:
        The run summary. When images failed and ``run.allow_failures`` is off, the run ends
        Failed, naming them, after every other image has been written.
    """
    with library_logs_in_run():
        try:
            return _anonymize(source, dest, detection, masking, output, run)
        except ConfigurationError as exc:
            # One line and the state's message, not tracebacks: a setting to fix. Callers
            # still get the error itself (the state carries it).
            get_run_logger().error("%s", exc)
            return Failed(message=str(exc), data=exc)


def _anonymize(
    source: str,
    dest: str,
    detection: DetectionSettings,
    masking: MaskSettings,
    output: OutputSettings,
    run: RunSettings,
) -> RunSummary | State:
    logger = get_run_logger()
    started = time.perf_counter()
    limit_heap_growth()  # resident memory stays flat over thousands of images
    storage = resolve_storage(run)
    check_paths(source, dest, run, storage)
    device_slots()  # a malformed ANON_TASKS_DEVICE_SLOTS fails here, before any task
    render = RenderSpec.from_settings(detection, masking, output, run)
    state = _Run(source, dest, render, storage, DecodedCache())
    if is_local(dest):
        remove_stale_staging_files(join_url(dest, STAGING_DIR))
    listed_at_ns = time.time_ns()
    listing = scan_source(source, storage)
    plan = plan_run(
        listing.images,
        listing.skipped,
        dest=dest,
        render=render,
        storage=storage,
        listed_at_ns=listed_at_ns,
    )
    detect_only = render.masking.method is AnonymizeMethod.NONE
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
    gone = plan.gone
    if gone and not detect_only:
        # Before any write: a file may now stand where a folder of outputs was, or the reverse.
        keep = {image.relative_path for image in plan.images} | {
            sidecar.relative_path for image in plan.images for sidecar in image.sidecars
        }
        removed_gone = remove_stale_outputs(gone, source, dest, quote(keep), storage)
    outcome = _process(plan, state)
    rows = outcome.rows
    manifest = None
    if not detect_only:
        rows = _remove_orphans(rows, plan, state)
        rows.extend(
            removed_row(plan.recorded[image][-1], paths) for image, paths in removed_gone.items()
        )
        rows.extend(skipped_row(entry, render) for entry in plan.skipped)
        manifest = write_manifest(dest, rows, run.partition, storage.options, protected_root=source)
        remove_journals([*outcome.journals, *plan.journals], storage.options)
    # A partition's rows are reviewed with the others' by the parent that merges them.
    review = (
        None if run.partition else write_review_page(quote(rows), source, dest, render, storage)
    )
    summary = _summary(
        state,
        plan,
        rows,
        outcome,
        seconds=round(time.perf_counter() - started, 3),
        manifest=manifest,
        review=review,
    )
    publish(summary, render, storage)
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
