"""Score anonymisation on WIDER FACE: recall, mask coverage and stray detections per difficulty.

Usage::

    .venv/bin/python benchmarks/accuracy.py [--quality balanced] [--threshold 0.4]
    .venv/bin/python benchmarks/accuracy.py --manifest DEST/_anonymize/manifest.jsonl

Runs the anonymize-dataset flow over ``../shared/data/wider-dev/images`` (on a temporary Prefect
server), reads the faces its manifest reports, and scores them against the ground truth:

- recall: share of ground-truth faces matched by a detection at IoU >= 0.5;
- mask coverage: share of ground-truth faces whose box is at least 80 % covered by the mask as
  drawn (blur ellipse, or box for solid/mosaic), after ``mask_scale``;
- stray detections: share of detections that touch no ground-truth face (IoU < 0.3 with all).

Per difficulty (easy / medium / hard lists of the official evaluation). Faces in no list, or
marked invalid, are "don't care": neither a miss nor, when a detection overlaps one, a stray.
Also counts faces reported on the no-face photos of ``../shared/data/no-faces``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_description

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
LEVELS = ("easy", "medium", "hard")


@dataclass
class GroundTruth:
    boxes: np.ndarray  # (N, 4) xyxy
    levels: dict[str, set[int]]  # 0-based indices per difficulty
    invalid: set[int] = field(default_factory=set)


def load_ground_truth(root: Path) -> dict[str, GroundTruth]:
    lines = (root / "wider_face_val_bbx_gt.txt").read_text().splitlines()
    truth: dict[str, GroundTruth] = {}
    index = 0
    while index < len(lines):
        name, count = lines[index].strip(), int(lines[index + 1])
        rows = [list(map(int, line.split())) for line in lines[index + 2 : index + 2 + count]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, *_ in rows], float).reshape(-1, 4)
        invalid = {i for i, row in enumerate(rows) if row[7] == 1}
        truth[name] = GroundTruth(boxes=boxes, levels={}, invalid=invalid)
        index += 2 + max(count, 1)
    for line in (root / "difficulty.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, *columns = line.split("\t")
        for column in columns:
            level, _, indices = column.partition(":")
            truth[name].levels[level] = {int(i) - 1 for i in indices.split(",") if i}
    return truth


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def drawn_mask(shape_hw: tuple[int, int], faces: list, scale: float, ellipse: bool) -> np.ndarray:
    """The pixels the blur mask replaces, exactly as anon_tasks.imaging.masking draws it."""
    from anon_tasks.core.settings import MaskSettings
    from anon_tasks.imaging.masking import masked_pixels

    settings = MaskSettings(mask_scale=scale, ellipse=ellipse)
    return masked_pixels(shape_hw[0], shape_hw[1], faces, settings)


def coverage(covered: np.ndarray, box: np.ndarray) -> float:
    height, width = covered.shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        return 0.0
    return float(covered[y1:y2, x1:x2].mean())


def score(
    truth: dict[str, GroundTruth],
    detections: dict[str, list],
    sizes: dict[str, tuple[int, int]],
    mask_scale: float,
) -> dict[str, object]:
    found = {level: [0, 0] for level in LEVELS}
    covered_by = {name: {level: [0, 0] for level in LEVELS} for name in ("ellipse", "box")}
    stray = total = 0
    for name, gt in truth.items():
        faces = detections.get(name, [])
        boxes = np.array([face.xyxy for face in faces], float).reshape(-1, 4)
        overlaps = iou_matrix(gt.boxes, boxes)
        matched = (overlaps >= 0.5).any(axis=1) if len(boxes) else np.zeros(len(gt.boxes), bool)
        masks = {
            "ellipse": drawn_mask(sizes[name], faces, mask_scale, True),
            "box": drawn_mask(sizes[name], faces, mask_scale, False),
        }
        for level in LEVELS:
            for face in gt.levels.get(level, set()) - gt.invalid:
                found[level][1] += 1
                found[level][0] += int(matched[face])
                for kind, covered in masks.items():
                    covered_by[kind][level][1] += 1
                    covered_by[kind][level][0] += int(coverage(covered, gt.boxes[face]) >= 0.8)
        # Strays: detections that touch no face at all (don't-care faces included, so a
        # detection on one is not counted against the detector).
        if len(boxes):
            total += len(boxes)
            stray += int(
                ((overlaps < 0.3).all(axis=0) if len(gt.boxes) else np.ones(len(boxes), bool)).sum()
            )
    return {
        "recall": {level: round(hit / max(1, n), 3) for level, (hit, n) in found.items()},
        "faces": {level: n for level, (_, n) in found.items()},
        "coverage": {
            kind: {level: round(hit / max(1, n), 3) for level, (hit, n) in levels.items()}
            for kind, levels in covered_by.items()
        },
        "detections": total,
        "stray_share": round(stray / max(1, total), 3),
    }


def run_flow(
    source: Path, quality: str, threshold: float, no_faces: Path, precision: str = "exact"
) -> tuple[Path, float, int]:
    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    from anon_tasks.core.settings import DetectionSettings, RunSettings
    from anon_tasks.flows import anonymize_dataset

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    work = Path(tempfile.mkdtemp(prefix="anon-accuracy-"))
    detection = DetectionSettings(
        device="cpu", threshold=threshold, quality=quality, precision=precision
    )
    updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with prefect_settings.temporary_settings(updates=updates), prefect_test_harness():
        started = time.perf_counter()
        anonymize_dataset(str(source), str(work / "wider"), detection, run=RunSettings())
        seconds = time.perf_counter() - started
        nothing = anonymize_dataset(str(no_faces), str(work / "no-faces"), detection)
    return work / "wider" / "_anonymize" / "manifest.jsonl", seconds, nothing.faces_found


def read_manifest_faces(manifest: Path, threshold: float) -> dict[str, list]:
    """The faces each manifest row reports above ``threshold``, landmarks included."""
    from anon_tasks.core.faces import Face

    detections = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        detections[row["source"]] = [
            Face(
                xyxy=face["box"],
                score=face["score"],
                landmarks_xy=tuple(tuple(point) for point in face.get("landmarks", ())),
            )
            for face in row["faces"]
            if face["score"] > threshold
        ]
    return detections


def reference_bgr_detections(
    root: Path, truth: dict[str, GroundTruth], threshold: float
) -> dict[str, list]:
    """Detections of the default pass on BGR pixels, for comparison with the given reference."""
    import cv2

    from anon_tasks.core.settings import DetectionSettings
    from anon_tasks.detection.detector import CenterFaceDetector

    detector = CenterFaceDetector(DetectionSettings(device="cpu", threshold=threshold))
    return {
        name: list(
            detector.detect(cv2.imread(str(root / "images" / name), cv2.IMREAD_COLOR))
            .above(threshold)
            .to_faces()
        )
        for name in truth
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", default="balanced", choices=["fast", "balanced", "thorough"])
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--precision", default="exact", choices=["exact", "fast"])
    parser.add_argument("--mask-scale", type=float, default=1.0)
    parser.add_argument("--manifest", type=Path, help="score this manifest instead of running")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--reference-bgr",
        action="store_true",
        help="score the model fed BGR images (cv2.imread straight in), as the given reference "
        "figures were made, instead of running the flow",
    )
    args = parser.parse_args()
    from PIL import Image

    root = args.data / "wider-dev"
    truth = load_ground_truth(root)
    sizes = {}
    for name in truth:
        with Image.open(root / "images" / name) as image:
            sizes[name] = (image.height, image.width)
    seconds, no_face_count = None, None
    manifest = args.manifest
    if args.reference_bgr:
        detections = reference_bgr_detections(root, truth, args.threshold)
    elif manifest is None:
        manifest, seconds, no_face_count = run_flow(
            root / "images", args.quality, args.threshold, args.data / "no-faces", args.precision
        )
    if not args.reference_bgr:
        detections = read_manifest_faces(manifest, args.threshold)
    result = score(truth, detections, sizes, args.mask_scale)
    result.update(
        {
            "quality": "reference (BGR input)" if args.reference_bgr else args.quality,
            "threshold": args.threshold,
            "precision": args.precision,
            "mask_scale": args.mask_scale,
            "flow_seconds": None if seconds is None else round(seconds, 1),
            "faces_on_no_face_photos": no_face_count,
            "images": len(truth),
            "machine": machine_description(),
        }
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
