"""The ``anonymize`` command: run the anonymize-dataset flow on a folder (or one file).

A folder or fsspec URL runs the Prefect flow: against the API in ``PREFECT_API_URL`` when it is
set (a running server: no start-up cost), otherwise against Prefect's temporary local server,
which takes several seconds to start in each process. A single file takes the library path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anon_tasks.core.errors import AnonTasksError, ConfigurationError, ImageError
from anon_tasks.core.records import RunSummary
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    Precision,
    Quality,
    RunSettings,
    build_settings,
)
from anon_tasks.core.urls import is_local

logger = logging.getLogger("anon_tasks.cli")

#: Summary fields printed without --json, in this order.
SUMMARY_FIELDS = (
    "images_total",
    "images_written",
    "images_unchanged",
    "images_failed",
    "images_inferred",
    "faces_found",
    "seconds",
    "manifest",
    "review",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymize",
        description="Find faces in every image of SOURCE with CenterFace and hide them in a copy "
        "at DEST (same relative paths and formats, EXIF/GPS stripped, an audit manifest in "
        "DEST/_anonymize/manifest.jsonl). Reruns only redo what changed.",
    )
    parser.add_argument("source", help="a folder, an fsspec URL (s3://...) or one image file")
    parser.add_argument("dest", help="output folder or URL (not inside the source)")
    parser.add_argument(
        "--method",
        choices=[m.value for m in AnonymizeMethod],
        default=AnonymizeMethod.BLUR.value,
        help="how faces are hidden (default: blur)",
    )
    parser.add_argument("--threshold", type=float, default=0.4, help="detection score threshold")
    parser.add_argument(
        "--quality",
        choices=[q.value for q in Quality],
        default=Quality.BALANCED.value,
        help="fast, balanced (default) or thorough (finds many more small faces, ~8x slower)",
    )
    parser.add_argument(
        "--precision",
        choices=[p.value for p in Precision],
        default=Precision.EXACT.value,
        help="exact (default: the reference's detections) or fast (bfloat16 where the CPU has it)",
    )
    parser.add_argument("--mask-scale", type=float, default=1.0, help="scale of each face box")
    parser.add_argument("--no-ellipse", action="store_true", help="blur the whole box")
    parser.add_argument("--mosaic-size", type=int, default=20, help="mosaic block edge in px")
    parser.add_argument(
        "--caption-note", help="add this to caption sidecars of images whose faces were masked"
    )
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG/WebP quality")
    parser.add_argument(
        "--keep-metadata", action="store_true", help="keep EXIF minus GPS and orientation"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--shard-size", type=int, help="images per task run (default: sized from the files)"
    )
    parser.add_argument(
        "--allow-failures", action="store_true", help="exit 0 even when some images failed"
    )
    parser.add_argument(
        "--review-images",
        type=int,
        default=600,
        help="most images on the review page, DEST/_anonymize/review/index.html (0: none)",
    )
    parser.add_argument("--result-storage", help="block slug, path or URL for cached detections")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(
    args: argparse.Namespace,
) -> tuple[DetectionSettings, MaskSettings, OutputSettings, RunSettings]:
    """The flow's parameter models from the command line; bad values name their field."""
    return (
        build_settings(
            DetectionSettings,
            threshold=args.threshold,
            device=args.device,
            quality=args.quality,
            precision=args.precision,
        ),
        build_settings(
            MaskSettings,
            method=args.method,
            mask_scale=args.mask_scale,
            ellipse=not args.no_ellipse,
            mosaic_size=args.mosaic_size,
        ),
        build_settings(
            OutputSettings, jpeg_quality=args.jpeg_quality, keep_metadata=args.keep_metadata
        ),
        build_settings(
            RunSettings,
            shard_size=args.shard_size,
            allow_failures=args.allow_failures,
            review_images=args.review_images,
            caption_note=args.caption_note,
            result_storage=args.result_storage,
        ),
    )


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from anon_tasks.pipeline.progress import listening

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task_id = bar.add_task("anonymising", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)

        with listening(update):
            yield


def run_flow(args: argparse.Namespace) -> dict[str, Any]:
    """Run the anonymize-dataset flow and return its summary as a dict."""
    detection, masking, output, run = settings_from_args(args)
    # Library modules log through Prefect's handlers (and into the UI) during a flow run.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "anon_tasks")
    from anon_tasks.flows.anonymize_dataset import anonymize_dataset
    from anon_tasks.orchestration.credentials import resolve_storage
    from anon_tasks.orchestration.preflight import check_paths

    # Refuse bad paths before Prefect starts anything.
    check_paths(args.source, args.dest, run, resolve_storage(run))

    with _progress_bar(sys.stderr.isatty() and not args.no_progress and not args.json):
        state = anonymize_dataset(
            args.source, args.dest, detection, masking, output, run, return_state=True
        )
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunSummary):
        return result.model_dump(mode="json")
    if isinstance(result, BaseException):
        raise result
    raise AnonTasksError(f"the flow ended {state.type.value} without a summary: {state.message}")


def run_file(args: argparse.Namespace) -> dict[str, Any]:
    """Anonymise one file through the library path (no Prefect run).

    The output is written in the format its extension names; with ``--method none`` the faces
    are reported and nothing is written.
    """
    from anon_tasks.datasets.paths import check_file_paths
    from anon_tasks.pipeline.anonymizer import Anonymizer

    detection, masking, output, _ = settings_from_args(args)
    check_file_paths(args.source, args.dest)
    anonymizer = Anonymizer(detection=detection, masking=masking, output=output)
    summary: dict[str, Any] = {"images_total": 1, "images_unchanged": 0, "images_inferred": 1}
    try:
        if masking.method is AnonymizeMethod.NONE:
            faces = anonymizer.find_faces_in_file(args.source)
            return {
                **summary,
                "images_written": 0,
                "images_failed": 0,
                "faces_found": len(faces),
                "failed_images": [],
            }
        result = anonymizer.anonymize_file(args.source, args.dest)
    except ImageError as exc:
        logger.error("%s", exc)
        return {
            **summary,
            "images_written": 0,
            "images_failed": 1,
            "faces_found": 0,
            "failed_images": [args.source],
        }
    return {
        **summary,
        "images_written": 1,
        "images_failed": 0,
        "faces_found": len(result.faces),
        "failed_images": [],
    }


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each message."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """The command's own messages on stderr (stdout is kept for the summary)."""
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anonymize`` console script; returns the exit code.

    Exit codes: 0 all images anonymised, 1 some images failed (or the run failed), 2 a
    configuration error (nothing was done).
    """
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        single_file = is_local(args.source) and not Path(args.source).is_dir()
        summary = run_file(args) if single_file else run_flow(args)
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except AnonTasksError as exc:
        logger.error("%s", exc)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for key in SUMMARY_FIELDS:
            if key in summary:
                sys.stdout.write(f"{key}: {summary[key]}\n")
        for name in summary.get("failed_images", [])[:50]:
            sys.stdout.write(f"failed: {name}\n")
    return 1 if summary["images_failed"] and not args.allow_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
