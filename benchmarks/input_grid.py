"""What a coarser model-input canvas costs in faces and saves in input shapes.

Usage::

    .venv/bin/python benchmarks/input_grid.py [FOLDER] [--grids 64 128] [--threshold 0.4]

FOLDER defaults to ../shared/data/wider-dev/images. CUDA plans its kernels once per input
shape (about 2 s each, docs/benchmarks.md), so on CUDA every image runs on a canvas whose sides
are multiples of ``CUDA_CANVAS_GRID_PX``: the image at its network size (multiples of 32, as
the reference) at the top left, black beyond. This script runs the CPU model on every image at
its network size (the reference) and on each grid's canvas, and prints per grid: distinct input
shapes, extra input pixels, faces above the threshold lost and gained, and how far the kept
faces moved (box corners in pixels, scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_DATASET, image_files, machine_description

from anon_tasks.core.settings import DetectionSettings
from anon_tasks.detection.boxes import FaceArrays
from anon_tasks.detection.centerface import network_size_wh
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import to_detector_rgb

#: Corners further apart than this are different faces, not the same one moved.
SAME_FACE_PX = 8.0


class _GridDetector(CenterFaceDetector):
    """The CPU detector on the canvas grid of a GPU one."""

    def __init__(self, grid_px: int, threshold: float) -> None:
        super().__init__(DetectionSettings(device="cpu", threshold=threshold))
        self._grid_px = grid_px

    @property
    def canvas_grid_px(self) -> int:
        return self._grid_px


def _compare(reference: FaceArrays, found: FaceArrays) -> tuple[int, int, list[float], list[float]]:
    """Faces lost and gained, and the corner and score moves of the faces in both."""
    unmatched = set(range(len(found)))
    lost = 0
    box_moves, score_moves = [], []
    for index in range(len(reference)):
        if not unmatched:
            lost += 1
            continue
        candidates = sorted(unmatched)
        corners = np.abs(found.xyxy[candidates] - reference.xyxy[index]).max(axis=1)
        best = int(np.argmin(corners))
        if corners[best] >= SAME_FACE_PX:
            lost += 1
            continue
        unmatched.discard(candidates[best])
        box_moves.append(float(corners[best]))
        score_moves.append(abs(float(found.scores[candidates[best]] - reference.scores[index])))
    return lost, len(unmatched), box_moves, score_moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threshold", type=float, default=0.4)
    args = parser.parse_args()
    files = image_files(args.folder)
    if not files:
        raise SystemExit(f"no images under {args.folder}")
    print(f"machine: {machine_description()}")
    print(f"images: {len(files)} from {args.folder}, threshold {args.threshold}")

    reference_detector = CenterFaceDetector(
        DetectionSettings(device="cpu", threshold=args.threshold)
    )
    grid_detectors = {grid: _GridDetector(grid, args.threshold) for grid in args.grids}
    network_shapes: set[tuple[int, int]] = set()
    canvases: dict[int, set[tuple[int, int]]] = {grid: set() for grid in args.grids}
    network_pixels = 0
    canvas_pixels = dict.fromkeys(args.grids, 0)
    totals = {grid: [0, 0, [], []] for grid in args.grids}
    faces = 0
    for path in files:
        rgb = to_detector_rgb(decode_image(path.read_bytes()).frames[0])
        height, width = rgb.shape[:2]
        net_w, net_h = network_size_wh(width, height)
        network_shapes.add((net_w, net_h))
        network_pixels += net_w * net_h
        reference = reference_detector.detect(rgb).above(args.threshold)
        faces += len(reference)
        for grid, detector in grid_detectors.items():
            canvas_w, canvas_h = detector.canvas_size_wh(width, height)
            canvases[grid].add((canvas_w, canvas_h))
            canvas_pixels[grid] += canvas_w * canvas_h
            lost, gained, box_moves, score_moves = _compare(
                reference, detector.detect(rgb).above(args.threshold)
            )
            total = totals[grid]
            total[0] += lost
            total[1] += gained
            total[2].extend(box_moves)
            total[3].extend(score_moves)

    print(f"reference: {len(network_shapes)} network sizes, {faces} faces")
    print("grid | input shapes | extra pixels | lost | gained | box move max / p99 | score max")
    for grid in args.grids:
        lost, gained, box_moves, score_moves = totals[grid]
        extra = 100 * (canvas_pixels[grid] / network_pixels - 1)
        box_max = max(box_moves, default=0.0)
        box_p99 = float(np.percentile(box_moves, 99)) if box_moves else 0.0
        print(
            f"{grid:4d} | {len(canvases[grid]):12d} | {extra:11.1f}% | {lost:4d} | {gained:6d} | "
            f"{box_max:.3f} / {box_p99:.4f} px | {max(score_moves, default=0.0):.4f}"
        )


if __name__ == "__main__":
    main()
