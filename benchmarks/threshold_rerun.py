"""A threshold rerun's cost: the images it renders again, and its review page with tiles copied
from the earlier review against the same review drawn from scratch.

Usage::

    python benchmarks/threshold_rerun.py [folder] [--threshold 0.4] [--rerun-threshold 0.3]
        [--repeat 3]

Runs the flow once at ``--threshold`` (which draws its review), keeps a copy of that review,
then reruns it at ``--rerun-threshold`` (timed: the images it renders again, the review it
draws). Then, ``--repeat`` times: the second run's review written over a copy of the
first's (what a threshold rerun does: unchanged tiles copied) and written into an empty review
folder (everything drawn). Prints the medians, their ratio and how many thumbnails each drew.
Prefect runs on its temporary server (started once, not timed); the review itself is pure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATASET, image_files, machine_description

logger = logging.getLogger("threshold_rerun")


def _thumbnails(dest: Path) -> str:
    """What the review in ``dest`` last drew, as its record counts it."""
    from anon_tasks.review import REVIEW_DIR

    made = json.loads((dest / REVIEW_DIR / "review.json").read_text())["thumbnails"]
    return "{drawn} drawn, {copied} copied, {kept} kept on unchanged sheets".format(**made)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--rerun-threshold", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.datasets.keys import RenderSpec
    from anon_tasks.datasets.manifest import read_manifest
    from anon_tasks.flows import anonymize_dataset
    from anon_tasks.review import REVIEW_DIR, ReviewRequest, write_review

    first = DetectionSettings(device="cpu", threshold=args.threshold)
    second = DetectionSettings(device="cpu", threshold=args.rerun_threshold)
    logger.info("machine: %s", machine_description())
    logger.info("images : %d from %s", len(image_files(args.folder)), args.folder)
    updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with (
        prefect_settings.temporary_settings(updates=updates),
        prefect_test_harness(),
        tempfile.TemporaryDirectory(prefix="anon-threshold-rerun-") as work,
    ):
        dest = Path(work) / "clean"
        anonymize_dataset(str(args.folder), str(dest), first)
        earlier = Path(work) / "earlier-review"
        shutil.copytree(dest / REVIEW_DIR, earlier)
        started = time.perf_counter()
        summary = anonymize_dataset(str(args.folder), str(dest), second)
        rerun_seconds = time.perf_counter() - started
        logger.info(
            "rerun at %g: %.2f s, review included (%s); %d image(s) rendered again, "
            "%d unchanged, %d inferred",
            args.rerun_threshold,
            rerun_seconds,
            _thumbnails(dest),
            summary.images_written,
            summary.images_unchanged,
            summary.images_inferred,
        )
        rows = list(read_manifest(str(dest)).values())
        request = ReviewRequest.for_run(
            str(args.folder), str(dest), RenderSpec.from_settings(second), None
        )
        timings: dict[str, list[float]] = {"copying": [], "from scratch": []}
        drew: dict[str, str] = {}
        for _ in range(args.repeat):
            for case in timings:
                shutil.rmtree(dest / REVIEW_DIR, ignore_errors=True)
                if case == "copying":
                    shutil.copytree(earlier, dest / REVIEW_DIR, copy_function=shutil.copy2)
                    # copies have new fingerprints: record them as the earlier review's own
                    _refingerprint(dest / REVIEW_DIR)
                started = time.perf_counter()
                write_review(rows, request)
                timings[case].append(time.perf_counter() - started)
                drew[case] = _thumbnails(dest)
    medians = {case: statistics.median(seconds) for case, seconds in timings.items()}
    for case, seconds in medians.items():
        logger.info(
            "review %-12s %.2f s (median of %d; %s)", case, seconds, args.repeat, drew[case]
        )
    logger.info("from scratch / copying: %.2fx", medians["from scratch"] / medians["copying"])


def _refingerprint(folder: Path) -> None:
    """Rewrite the copied record's fingerprints with the copies' own, as if this review folder
    had been written where it is (a copy of a folder is otherwise not "as written")."""
    from anon_tasks.storage.fingerprints import file_fingerprint

    path = folder / "review.json"
    record = json.loads(path.read_text())
    record["files"] = {name: file_fingerprint(str(folder / name)) for name in record["files"]}
    path.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
