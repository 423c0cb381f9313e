"""Peak memory and time of detection on one 50 MP photo, per quality mode.

Each quality runs in its own process, so each peak is its own. The photo is
``../shared/data/awkward/astronaut_tiled_6144x3072.jpg`` (72 faces) scaled to 10,000 x 5,000 px.
Prints one JSON object: per quality, seconds, faces found at the default threshold, the process's
resident memory before detection (model loaded, photo decoded) and its peak during detection.

    .venv/bin/python benchmarks/large_image.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, machine_description, peak_rss_mb

PHOTO = REPO_ROOT.parent / "shared" / "data" / "awkward" / "astronaut_tiled_6144x3072.jpg"
SIZE_WH = (10_000, 5_000)


def measure_one(quality: str) -> dict[str, object]:
    """Detect faces in the scaled photo with one quality mode, in this process."""
    import cv2

    from anon_tasks.core.settings import DetectionSettings, Quality
    from anon_tasks.detection.detector import CenterFaceDetector

    detector = CenterFaceDetector(DetectionSettings(device="cpu", quality=Quality(quality)))
    rgb = cv2.cvtColor(cv2.imread(str(PHOTO), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, SIZE_WH, interpolation=cv2.INTER_CUBIC)
    before_mb = peak_rss_mb()
    started = time.perf_counter()
    found = detector.detect_quality(rgb).above(detector.settings.threshold)
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "faces": len(found),
        "model_runs": detector.inference_count,
        "rss_before_mb": round(before_mb),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", nargs="*", default=["fast", "balanced", "thorough"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one)))
        return
    if not PHOTO.exists():
        raise SystemExit(f"{PHOTO} is missing: this benchmark needs ../shared/data")
    results = {}
    for quality in args.quality:
        child = subprocess.run(
            [sys.executable, __file__, "--one", quality],
            check=True,
            capture_output=True,
            text=True,
        )
        results[quality] = json.loads(child.stdout.strip().splitlines()[-1])
    report = {
        "photo": f"{PHOTO.name} scaled to {SIZE_WH[0]}x{SIZE_WH[1]}",
        "machine": machine_description(),
        **results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
