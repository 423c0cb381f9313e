"""Time the anonymize-dataset flow against the library path, the bare model and deface's CLI.

Usage::

    .venv/bin/python benchmarks/flow_benchmark.py [FOLDER]

FOLDER defaults to ../shared/data/wider-dev/images.

In one run, on the same images with the same settings (blur, threshold 0.4, mask scale 1.0):
the bare ONNX Runtime floor, the library path without Prefect, deface's CLI, then the flow's
first run, a rerun with the same parameters and a rerun with another method. The flow runs
against a temporary Prefect server started once (its start-up is reported separately).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATASET,
    bare_inference_seconds,
    deface_cli_seconds,
    image_files,
    machine_description,
    median_ms,
    peak_rss_mb,
)


def library_seconds(files: list[Path], source: Path, dest: Path) -> float:
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.pipeline.anonymizer import Anonymizer

    anonymizer = Anonymizer(detection=DetectionSettings(device="cpu"))
    anonymizer.detector.detect(anonymizer.decode(files[0].read_bytes()).frames[0])  # warm up
    started = time.perf_counter()
    for path in files:
        target = dest / path.relative_to(source)
        anonymizer.anonymize_file(str(path), str(target))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--skip-deface", action="store_true")
    args = parser.parse_args()
    files = image_files(args.folder)
    if not files:
        raise SystemExit(f"no images under {args.folder}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.getLogger("prefect").setLevel(logging.WARNING)
    n = len(files)
    print(f"machine: {machine_description()}")
    print(f"images: {n} from {args.folder}")

    floor = bare_inference_seconds(files)
    floor_total = sum(floor)
    print(f"bare inference floor : {floor_total:7.2f} s  {median_ms(floor):6.1f} ms/img median")

    with tempfile.TemporaryDirectory(prefix="anon-bench-") as work:
        work_path = Path(work)
        library = library_seconds(files, args.folder, work_path / "library")
        print(f"library path         : {library:7.2f} s  {1000 * library / n:6.1f} ms/img")

        deface = None
        if not args.skip_deface:
            deface = deface_cli_seconds(files, threshold=0.4, mask_scale=1.0)
            print(f"deface CLI           : {deface:7.2f} s  {1000 * deface / n:6.1f} ms/img")

        import prefect.settings as prefect_settings
        from prefect.testing.utilities import prefect_test_harness

        from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings
        from anon_tasks.flows import anonymize_dataset

        started = time.perf_counter()
        updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with prefect_settings.temporary_settings(updates=updates), prefect_test_harness():
            startup = time.perf_counter() - started
            print(f"prefect server start : {startup:7.2f} s  (not counted below)")
            dest = str(work_path / "flow")
            detection = DetectionSettings(device="cpu")
            timings = {}
            for label, masking in (
                ("flow, first run", MaskSettings()),
                ("flow, same rerun", MaskSettings()),
                ("flow, method change", MaskSettings(method=AnonymizeMethod.MOSAIC)),
            ):
                started = time.perf_counter()
                summary = anonymize_dataset(str(args.folder), dest, detection, masking)
                timings[label] = time.perf_counter() - started
                print(
                    f"{label:21}: {timings[label]:7.2f} s  {1000 * timings[label] / n:6.1f} "
                    f"ms/img  (inferred {summary.images_inferred}, read {summary.images_read}, "
                    f"written {summary.images_written})"
                )

    first = timings["flow, first run"]
    print("ratios:")
    print(f"  flow first run / bare floor       : {first / floor_total:5.2f}x")
    print(f"  flow first run / library path     : {first / library:5.2f}x")
    if deface is not None:
        print(f"  deface CLI / flow first run       : {deface / first:5.2f}x")
    for label in ("flow, same rerun", "flow, method change"):
        print(f"  {label + ' / first run':34}: {100 * timings[label] / first:5.1f} %")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
