"""GPU check: is CUDA really used, do its detections match the CPU's, and how fast is it.

Usage (on a host with an NVIDIA GPU and ``anon-tasks[cuda]`` installed)::

    python benchmarks/gpu_check.py [--device cuda:0] [--json results.json]

Prints the execution provider the session really got, the largest box and score differences
between CUDA and CPU detections on the same images, the model's images/s at batch sizes 1, 8 and
32 for 1024x768 and 1920x1080 images (preprocessing, inference and decoding; images already
decoded), and an end-to-end figure (JPEG decode, detection, blur and JPEG encode, CPU work spread
over a thread pool). Exits 1 when CUDA is not used or detections differ beyond tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anon_tasks.detector import CenterFaceDetector
from anon_tasks.settings import DetectionSettings

SIZES = ((1024, 768), (1920, 1080))
BATCHES = (1, 8, 32)
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.02


def faces_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Real faces at several scales: scikit-image's astronaut tiled and resized."""
    from skimage import data

    astronaut = data.astronaut()
    rng = np.random.default_rng(seed)
    tiles = np.concatenate(
        [np.concatenate([np.roll(astronaut, int(rng.integers(0, 200)), axis=1)] * 3, axis=1)] * 2,
        axis=0,
    )
    return np.ascontiguousarray(cv2.resize(tiles, (width, height), interpolation=cv2.INTER_AREA))


def compare(cpu: CenterFaceDetector, gpu: CenterFaceDetector) -> dict[str, float]:
    worst_box = worst_score = 0.0
    count_mismatches = faces = 0
    for width, height in SIZES:
        for seed in range(4):
            rgb = faces_image(width, height, seed)
            on_cpu, on_gpu = cpu.detect(rgb, score_floor=0.4), gpu.detect(rgb, score_floor=0.4)
            faces += len(on_cpu)
            if len(on_cpu) != len(on_gpu):
                count_mismatches += 1
                continue
            if len(on_cpu):
                distance = np.abs(on_cpu.xyxy[:, None] - on_gpu.xyxy[None]).max(axis=2)
                nearest = distance.argmin(axis=1)
                worst_box = max(worst_box, float(distance.min(axis=1).max()))
                worst_score = max(
                    worst_score, float(np.abs(on_cpu.scores - on_gpu.scores[nearest]).max())
                )
    return {
        "faces_compared": faces,
        "count_mismatches": count_mismatches,
        "max_box_diff_px": worst_box,
        "max_score_diff": worst_score,
    }


def model_throughput(detector: CenterFaceDetector, seconds: float) -> list[dict[str, float]]:
    rows = []
    for width, height in SIZES:
        rgb = faces_image(width, height)
        for batch in BATCHES:
            images = [rgb] * batch
            for _ in range(3):
                detector.detect_batch(images)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                detector.detect_batch(images)
                runs += 1
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "size": f"{width}x{height}",
                    "batch": batch,
                    "images_per_s": round(runs * batch / elapsed, 1),
                    "ms_per_batch": round(1000 * elapsed / runs, 2),
                }
            )
            print(f"  {width}x{height} batch {batch:2d}: {rows[-1]['images_per_s']:8.1f} img/s")
    return rows


def end_to_end(detector: CenterFaceDetector, images: int, batch: int, workers: int) -> float:
    """Images/s for JPEG bytes in, anonymised JPEG bytes out (1024x768)."""
    from anon_tasks.detections import Face
    from anon_tasks.masking import mask_faces
    from anon_tasks.settings import MaskSettings

    jpegs = [
        cv2.imencode(".jpg", cv2.cvtColor(faces_image(1024, 768, seed), cv2.COLOR_RGB2BGR))[1]
        for seed in range(8)
    ]
    settings = MaskSettings()

    def decode(index: int) -> np.ndarray:
        bgr = cv2.imdecode(jpegs[index % len(jpegs)], cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def finish(item: tuple[np.ndarray, object]) -> int:
        rgb, found = item
        faces = [
            Face(xyxy=tuple(box), score=float(score))
            for box, score in zip(found.xyxy.tolist(), found.scores.tolist(), strict=True)
        ]
        masked = mask_faces(rgb, faces, settings)
        return len(cv2.imencode(".jpg", masked, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])

    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        pending = []
        for first in range(0, images, batch):
            frames = list(pool.map(decode, range(first, min(images, first + batch))))
            found = detector.detect_batch(frames, score_floor=0.4)
            pending.append(pool.map(finish, zip(frames, found, strict=True)))
        for results in pending:
            list(results)
        return images / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per configuration")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import onnxruntime

    report: dict[str, object] = {
        "onnxruntime": onnxruntime.__version__,
        "available_providers": onnxruntime.get_available_providers(),
    }
    gpu = CenterFaceDetector(DetectionSettings(device=args.device))
    cpu = CenterFaceDetector(DetectionSettings(device="cpu"))
    providers = gpu._session.session.get_providers()
    report["session_providers"] = providers
    print(f"session providers: {providers}")
    report["cpu_vs_gpu"] = compare(cpu, gpu)
    print(f"cpu vs gpu: {report['cpu_vs_gpu']}")
    print("model throughput (preprocess + inference + decode):")
    report["model"] = model_throughput(gpu, args.seconds)
    workers = max(2, (os.cpu_count() or 2) - 1)
    rate = end_to_end(gpu, images=512, batch=32, workers=workers)
    report["end_to_end_1024x768_images_per_s"] = round(rate, 1)
    report["end_to_end_workers"] = workers
    print(f"end to end, 1024x768 JPEG in/out, batch 32, {workers} CPU threads: {rate:.1f} img/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    agree = report["cpu_vs_gpu"]
    ok = (
        providers[0] == "CUDAExecutionProvider"
        and agree["count_mismatches"] == 0
        and agree["max_box_diff_px"] <= BOX_TOLERANCE_PX
        and agree["max_score_diff"] <= SCORE_TOLERANCE
    )
    print("GPU CHECK " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
