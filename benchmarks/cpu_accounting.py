"""Where the flow's CPU time goes: the model, each library stage, Prefect and its server.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python benchmarks/cpu_accounting.py [FOLDER]

FOLDER defaults to ../shared/data/wider-dev/images. One flow run on the CPU with the seed's
defaults, against Prefect's temporary server (started, and the model session built, before
the clock). The library's stage functions are wrapped to add up the CPU time of the threads
that run them (``time.thread_time``); what the flow process spent outside them is Prefect's
client and the flow's bookkeeping; the server's CPU is read from /proc (Linux). On a machine
whose cores are all busy, the run cannot take less than the CPU it needs divided by the cores:
that bound is printed for the model alone and for the model with the image stages.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATASET, image_files, machine_description

#: (label, module, owner attribute or None, function name), in the order the table shows them.
STAGES = (
    ("model (session.run)", "anon_tasks.detection.runtime", "InferenceSession", "run"),
    ("model input (resize, batch)", "anon_tasks.detection.detector", None, "network_batch"),
    ("output decoding and NMS", "anon_tasks.detection.detector", None, "decode_outputs"),
    ("Face values", "anon_tasks.detection.detector", "FaceArrays", "to_faces"),
    # Where the flow's stages call them (detection decodes; masking decodes what the run's
    # cache no longer holds).
    ("read and decode", "anon_tasks.pipeline.stages", None, "decode_image"),
    ("read and decode", "anon_tasks.orchestration.masking_task", None, "decode_image"),
    ("mask", "anon_tasks.orchestration.masking_task", None, "mask_image"),
    ("encode", "anon_tasks.orchestration.masking_task", None, "encode_image"),
    ("write files", "anon_tasks.orchestration.writing_tasks", None, "write_bytes_atomic"),
)
#: Stages the image work cannot do without, whatever runs them.
IMAGE_STAGES = ("read and decode", "mask", "encode")


class _StageClock:
    """Adds up the thread CPU seconds and calls of wrapped functions, per label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + spent
                    self.calls[label] = self.calls.get(label, 0) + 1

        return timed

    def install(self) -> None:
        import importlib

        for label, module_name, owner_name, name in STAGES:
            module = importlib.import_module(module_name)
            owner = getattr(module, owner_name) if owner_name else module
            setattr(owner, name, self.wrap(label, getattr(owner, name)))

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()
            self.calls.clear()


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's live child processes (the temporary Prefect server)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    args = parser.parse_args()
    files = image_files(args.folder)
    if not files:
        raise SystemExit(f"no images under {args.folder}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    print(f"machine: {machine_description()}")
    print(f"images: {len(files)} from {args.folder}")

    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    from anon_tasks.core.concurrency import available_cores
    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.detection.detector import CenterFaceDetector
    from anon_tasks.flows import anonymize_dataset

    clock = _StageClock()
    clock.install()
    updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with prefect_settings.temporary_settings(updates=updates), prefect_test_harness():
        CenterFaceDetector(DetectionSettings(device="cpu"))  # the session, before the clock
        with tempfile.TemporaryDirectory(prefix="anon-accounting-") as dest:
            clock.reset()
            server_before, process_before = _children_cpu_seconds(), _process_cpu_seconds()
            started = time.perf_counter()
            summary = anonymize_dataset(str(args.folder), dest, DetectionSettings(device="cpu"))
            wall = time.perf_counter() - started
            process = _process_cpu_seconds() - process_before
            server = _children_cpu_seconds() - server_before

    n = summary.images_total
    cores = available_cores()
    staged = sum(clock.seconds.values())
    print(f"flow: {wall:.2f} s wall, {summary.images_inferred} inferred, {cores} cores")
    print(f"{'where':34} {'CPU s':>7} {'ms/image':>9} {'share':>6}  calls")
    total = process + server
    for label in dict.fromkeys(label for label, *_ in STAGES):  # a label may wrap two places
        seconds = clock.seconds.get(label, 0.0)
        calls = clock.calls.get(label, 0)
        share = 100 * seconds / total
        print(f"{label:34} {seconds:7.2f} {1000 * seconds / n:9.2f} {share:5.1f}%  {calls}")
    for label, seconds in (
        ("flow process, outside the stages", process - staged),
        ("Prefect server process", server),
        ("total", total),
    ):
        print(f"{label:34} {seconds:7.2f} {1000 * seconds / n:9.2f} {100 * seconds / total:5.1f}%")
    model = clock.seconds.get(STAGES[0][0], 0.0)
    image_work = model + sum(clock.seconds.get(label, 0.0) for label in IMAGE_STAGES)
    print(f"cores busy: {total / wall:.2f} of {cores}")
    print(f"least wall time on {cores} cores: model alone {model / cores:.2f} s,")
    print(f"  model with read/decode, mask and encode {image_work / cores:.2f} s,")
    print(f"  everything {total / cores:.2f} s")


if __name__ == "__main__":
    main()
