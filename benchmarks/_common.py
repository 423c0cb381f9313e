"""Helpers shared by the benchmark scripts: timing, the machine, the bare-model floor, deface."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "wider-dev" / "images"


def machine_description() -> str:
    """One line naming the CPU, its cores and the Python/ONNX Runtime versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, opencv {cv2.__version__}"
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image_files(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".webp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def bare_inference_seconds(files: list[Path], threads: int | None = None) -> list[float]:
    """Per-image time of the rewritten model's ``session.run`` alone (decode not counted)."""
    from anon_tasks.detector import network_size_wh
    from anon_tasks.model import load_model_file
    from anon_tasks.runtime import DeviceSpec, get_session

    session = get_session(load_model_file(), DeviceSpec("cpu"), intra_op_threads=threads)
    times = []
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        width, height = network_size_wh(rgb.shape[1], rgb.shape[0])
        blob = cv2.dnn.blobFromImage(rgb, 1.0, (width, height), (0, 0, 0), False, False)
        started = time.perf_counter()
        session.session.run(list(session.output_names), {session.input_name: blob})
        times.append(time.perf_counter() - started)
    return times


def deface_cli_seconds(files: list[Path], *, threshold: float, mask_scale: float) -> float:
    """Wall time of deface's CLI anonymising copies of ``files`` with the same settings."""
    with tempfile.TemporaryDirectory(prefix="deface-bench-") as folder:
        for path in files:
            shutil.copy(path, Path(folder) / path.name)
        command = [
            str(Path(sys.executable).with_name("deface")),
            folder,
            "--thresh",
            str(threshold),
            "--mask-scale",
            str(mask_scale),
            "--ep",
            "CPUExecutionProvider",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds)) * 1000
