"""Exact against fast precision on the CPU: ONNX Runtime fp32 beside OpenVINO f32 and bf16.

Usage (from the repository root, after ``make install``; OpenVINO is not a dependency yet)::

    .venv/bin/pip install openvino
    .venv/bin/python benchmarks/precision.py [FOLDER] [--images 40] [--rounds 3]

FOLDER defaults to ../shared/data/wider-dev/images. Every runtime runs the same graph: the
shipped CenterFace model with its weights moved out of the graph inputs (float NCHW input,
dynamic height and width), on the reference's input blob built beforehand, with one thread (as
the pipeline runs each image on a CPU: one single-threaded run per core). Only the model run is
timed.

Speed: every runtime runs the first ``--images`` images in each of ``--rounds`` rounds,
interleaved (odd rounds in reverse order of runtimes); the table shows each runtime's median
per-image time in its fastest round, and each speed-up over ONNX Runtime fp32 is taken within a
round, then the median of the rounds is reported.

Accuracy, on every image of the folder that has WIDER FACE ground truth: the largest heatmap
difference to ONNX Runtime fp32, then detections at threshold 0.4 (the reference's decoding and
suppression) scored as ``benchmarks/accuracy.py`` scores them: recall per difficulty and the
share of stray detections.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATASET, bare_session, image_files, machine_description, reference_blob

Runner = Callable[[np.ndarray], list[np.ndarray]]
THRESHOLD = 0.4


def ort_fp32() -> Runner:
    """ONNX Runtime, fp32, one intra-op thread."""
    session, name = bare_session(threads=1)
    return lambda blob: session.run(None, {name: blob})


def openvino_runner(precision: str) -> Runner | None:
    """OpenVINO on the CPU at ``precision`` (``f32`` or ``bf16``), one thread and one stream;
    None when OpenVINO is not installed or the CPU has no such precision."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from anon_tasks.detection.model import load_model_file, without_weight_inputs

    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "centerface.onnx"
        path.write_bytes(without_weight_inputs(load_model_file().content))
        model = core.read_model(str(path))
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": 1,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    count = len(compiled.outputs)

    def run(blob: np.ndarray) -> list[np.ndarray]:
        request.infer({0: blob})
        return [request.get_output_tensor(index).data.copy() for index in range(count)]

    return run


def _timed(run: Runner, blobs: list[np.ndarray]) -> list[float]:
    times = []
    for blob in blobs:
        started = time.perf_counter()
        run(blob)
        times.append(time.perf_counter() - started)
    return times


def _faces(outputs: list[np.ndarray], path: Path) -> list:
    """Detections above the threshold in the image's own pixels, as the detector decodes."""
    from anon_tasks.detection.boxes import rescaled
    from anon_tasks.detection.centerface import decode_outputs, network_size_wh

    height, width = cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2]
    net_w, net_h = network_size_wh(width, height)
    found = decode_outputs(outputs, (net_w, net_h), THRESHOLD)
    return list(rescaled(found, net_w / width, net_h / height).to_faces())


def accuracy(runners: dict[str, Runner], folder: Path) -> None:
    from accuracy import DATA, load_ground_truth, score

    truth = load_ground_truth(DATA / "wider-dev")
    names = [name for name in truth if (folder / name).exists()]
    largest = dict.fromkeys(runners, 0.0)
    detections: dict[str, dict[str, list]] = {label: {} for label in runners}
    sizes: dict[str, tuple[int, int]] = {}
    for name in names:
        path = folder / name
        sizes[name] = cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2]
        blob = reference_blob(path)
        reference = None
        for label, run in runners.items():
            outputs = run(blob)
            if reference is None:
                reference = outputs[0]
            largest[label] = max(largest[label], float(np.abs(outputs[0] - reference).max()))
            detections[label][name] = _faces(outputs, path)
    truth = {name: truth[name] for name in names}
    print(f"\naccuracy on {len(names)} images with ground truth, threshold {THRESHOLD}:")
    print(
        f"{'runtime':<24}{'heatmap diff':>13}{'easy':>8}{'medium':>8}{'hard':>8}"
        f"{'detections':>12}{'stray':>8}"
    )
    for label in runners:
        result = score(truth, detections[label], sizes, mask_scale=1.0)
        recall = result["recall"]
        print(
            f"{label:<24}{largest[label]:>13.4f}{recall['easy']:>8.3f}{recall['medium']:>8.3f}"
            f"{recall['hard']:>8.3f}{result['detections']:>12}{result['stray_share']:>8.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    candidates = {
        "ONNX Runtime fp32": ort_fp32(),
        "OpenVINO f32": openvino_runner("f32"),
        "OpenVINO bf16": openvino_runner("bf16"),
    }
    runners = {label: run for label, run in candidates.items() if run is not None}
    missing = [label for label, run in candidates.items() if run is None]
    files = image_files(args.folder)
    blobs = [reference_blob(path) for path in files[: args.images]]
    print(f"machine: {machine_description()}")
    print(f"images : {len(blobs)} from {args.folder}; {args.rounds} interleaved rounds, 1 thread")
    if missing:
        print(f"not run: {', '.join(missing)} (OpenVINO missing, or no such precision here)")
    for run in runners.values():
        run(blobs[0])  # warm-up: compiled kernels, first allocations
    medians: dict[str, list[float]] = {label: [] for label in runners}
    order = list(runners)
    for index in range(args.rounds):
        for label in order if index % 2 == 0 else order[::-1]:
            medians[label].append(statistics.median(_timed(runners[label], blobs)))
    base = medians[order[0]]
    print(f"{'runtime':<24}{'ms per image':>14}{'speed-up':>10}   rounds")
    for label in order:
        ratios = [b / m for b, m in zip(base, medians[label], strict=True)]
        print(
            f"{label:<24}{1000 * min(medians[label]):>14.1f}{statistics.median(ratios):>9.2f}x"
            f"   {', '.join(f'{r:.2f}' for r in ratios)}"
        )
    accuracy(runners, args.folder)


if __name__ == "__main__":
    main()
