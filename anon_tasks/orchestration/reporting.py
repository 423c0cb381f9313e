"""What a run tells the Prefect UI and its listeners: progress, artifacts, the completion event.

Also the run's final state: Completed with the summary, or Failed naming the images that could
not be anonymised.
"""

from __future__ import annotations

import hashlib
import time

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.states import Completed, Failed, State

from anon_tasks.core.records import RunSummary
from anon_tasks.core.settings import AnonymizeMethod
from anon_tasks.core.urls import is_local, local_path
from anon_tasks.core.version import __version__
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import summary_url
from anon_tasks.pipeline.progress import report_progress
from anon_tasks.storage.resolved import ResolvedStorage
from anon_tasks.storage.writes import write_bytes_atomic

__all__ = [
    "DATASET_EVENT",
    "ProgressReport",
    "announce_dataset",
    "artifact_key",
    "finish_state",
    "publish",
]

#: Event emitted when a dataset is done; its resource id is ``anon-tasks.dataset.<dest>``.
DATASET_EVENT = "anon-tasks.dataset.anonymized"
#: Failed images the report and the failed state name, at most.
_NAMED_FAILURES = (50, 20)
_SUMMARY_FIELDS = (
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


class ProgressReport:
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


def _summary_table(summary: RunSummary) -> list[dict[str, object]]:
    return [{"counter": name, "value": getattr(summary, name)} for name in _SUMMARY_FIELDS]


def artifact_key(kind: str, dest: str, partition: tuple[int, int] | None = None) -> str:
    """The artifact key of one kind of report for a destination (and partition), so that the
    Artifacts page keeps each dataset's history: lowercase letters, digits and dashes."""
    digest = hashlib.sha256(dest.encode("utf-8")).hexdigest()[:12]
    tail = f"-part-{partition[0]}-of-{partition[1]}" if partition else ""
    return f"anon-{kind}-{digest}{tail}"


def _review_line(review: str | None) -> str:
    """The review page, linked where a browser can open it (a local file or an http URL)."""
    if review is None:
        return ""
    href = local_path(review).resolve().as_uri() if is_local(review) else review
    if href.startswith(("file://", "http://", "https://")):
        return f"Review page (masks and near misses): [{review}]({href})\n\n"
    return f"Review page (masks and near misses): `{review}`\n\n"


def _report(summary: RunSummary, render: RenderSpec) -> str:
    detection, masking = render.detection, render.masking
    failed = "\n".join(f"- `{name}`" for name in summary.failed_images[: _NAMED_FAILURES[0]])
    rate = summary.images_inferred / summary.seconds if summary.seconds else 0.0
    partition = f" (partition {summary.partition})" if summary.partition else ""
    return (
        f"# Anonymised `{summary.source}` into `{summary.dest}`{partition}\n\n"
        f"| parameter | value |\n|---|---|\n"
        f"| method | {masking.method.value} |\n| threshold | {detection.threshold} |\n"
        f"| quality | {detection.quality.value} |\n| precision | {detection.precision.value} |\n"
        f"| devices | {', '.join(summary.devices) or 'none (nothing inferred)'} |\n"
        f"| backend | {', '.join(summary.backends) or 'none (nothing inferred)'} |\n"
        f"| mask_scale | {masking.mask_scale} |\n| ellipse | {masking.ellipse} |\n"
        f"| mosaic_size | {masking.mosaic_size} |\n"
        f"| model | CenterFace `{render.model_sha256[:16]}…` "
        f"({detection.model_path or 'bundled'}) |\n"
        f"| anon-tasks | {__version__} |\n\n"
        f"{summary.images_written} written, {summary.images_unchanged} unchanged, "
        f"{summary.images_failed} failed, {summary.images_skipped} skipped, "
        f"{summary.images_removed} removed, {summary.faces_found} faces, "
        f"{summary.images_inferred} images inferred in {summary.seconds:.1f} s "
        f"({rate:.1f} images/s).\n\n"
        f"Manifest: `{summary.manifest}`\n\n{_review_line(summary.review)}"
        f"Failed images:\n{failed or 'none'}\n"
    )


def publish(summary: RunSummary, render: RenderSpec, storage: ResolvedStorage) -> None:
    """Summary file, UI artifacts and the completion event (for a detect-only run, the
    artifacts alone: it leaves dest as it is)."""
    detect_only = render.masking.method is AnonymizeMethod.NONE
    partition = render.run.partition
    if not detect_only:
        write_bytes_atomic(
            summary_url(summary.dest, partition),
            summary.model_dump_json(indent=2).encode(),
            storage.options,
            protected_root=summary.source,
        )
    create_table_artifact(
        table=_summary_table(summary),
        key=artifact_key("summary", summary.dest, partition),
        description="anonymize-dataset summary",
    )
    create_markdown_artifact(
        markdown=_report(summary, render),
        key=artifact_key("report", summary.dest, partition),
        description="Run report",
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
        shown = _NAMED_FAILURES[1]
        listed = ", ".join(failed[:shown]) + (" ..." if len(failed) > shown else "")
        return Failed(
            message=f"{len(failed)} image(s) could not be anonymised: {listed}", data=summary
        )
    return Completed(message="dataset anonymised", data=summary)
