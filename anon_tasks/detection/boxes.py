"""Box algebra on one image's detections: the ``FaceArrays`` value, suppression and mappings.

Detections are arrays (boxes, scores, landmarks) sorted by descending score. Greedy
non-maximum suppression follows the reference (deface's ``CenterFace``); the mappings move
detections between pixel grids (rescaled, shifted, mirrored) or adjust their scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anon_tasks.core.faces import Face

__all__ = [
    "NMS_IOU",
    "FaceArrays",
    "merge_detections",
    "mirrored",
    "nms_xyxy",
    "penalised",
    "rescaled",
    "shifted",
    "smaller_than",
]

#: IoU at which the reference suppresses the lower-scored of two boxes.
NMS_IOU = 0.3


@dataclass(frozen=True)
class FaceArrays:
    """Detections of one image as arrays, sorted by descending score.

    Attributes:
        xyxy: (N, 4) float32 boxes in the input image's pixels.
        scores: (N,) float32 confidences.
        landmarks_xy: (N, 5, 2) float32 landmark points.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    landmarks_xy: np.ndarray

    @classmethod
    def empty(cls) -> FaceArrays:
        """No detections."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks_xy=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> FaceArrays:
        """The detections scoring above ``threshold``, in the same order."""
        keep = self.scores > threshold
        return FaceArrays(self.xyxy[keep], self.scores[keep], self.landmarks_xy[keep])

    def to_faces(self, *, frame: int = 0) -> tuple[Face, ...]:
        """The detections as ``Face`` values of ``frame``."""
        # Values the detector made itself (finite floats, scores in [0, 1]): built without
        # re-validation, which would cost more than decoding them (dozens of faces an image).
        return tuple(
            Face.model_construct(
                xyxy=tuple(float(v) for v in box),
                score=min(1.0, max(0.0, float(score))),
                landmarks_xy=tuple((float(x), float(y)) for x, y in points),
                frame=frame,
            )
            for box, score, points in zip(
                self.xyxy.tolist(), self.scores.tolist(), self.landmarks_xy.tolist(), strict=True
            )
        )


def nms_xyxy(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order.

    Same rule as the reference: a box is dropped when its IoU with a kept, higher-scored box is
    at least ``iou_threshold``. Each step compares one kept box with all remaining ones at once.
    """
    x1, y1, x2, y2 = xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = inter_w * inter_h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou >= iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def merge_detections(parts: list[FaceArrays]) -> FaceArrays:
    """One set of faces from several passes: concatenated, then suppressed as one."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return FaceArrays.empty()
    xyxy = np.concatenate([part.xyxy for part in parts])
    scores = np.concatenate([part.scores for part in parts])
    points = np.concatenate([part.landmarks_xy for part in parts])
    keep = nms_xyxy(xyxy, scores)
    return FaceArrays(xyxy[keep], scores[keep], points[keep])


def rescaled(found: FaceArrays, scale_x: float, scale_y: float) -> FaceArrays:
    """Detections in an image ``scale_x`` x ``scale_y`` times larger, mapped back to the
    original's pixels (boxes and landmarks divided by the scale)."""
    if len(found) == 0:
        return found
    factor = np.array([scale_x, scale_y], np.float32)
    return FaceArrays(
        xyxy=(found.xyxy.reshape(-1, 2, 2) / factor).reshape(-1, 4),
        scores=found.scores,
        landmarks_xy=found.landmarks_xy / factor,
    )


def shifted(found: FaceArrays, dx: int, dy: int) -> FaceArrays:
    """Detections in a crop whose top left is at (``dx``, ``dy``), in the whole image's pixels."""
    if len(found) == 0:
        return found
    offset = np.array([dx, dy], np.float32)
    return FaceArrays(
        xyxy=(found.xyxy.reshape(-1, 2, 2) + offset).reshape(-1, 4),
        scores=found.scores,
        landmarks_xy=found.landmarks_xy + offset,
    )


def mirrored(found: FaceArrays, width: int) -> FaceArrays:
    """Detections in the left-right mirror of an image ``width`` pixels wide, in the image's
    own pixels (the eyes and mouth corners swapped back)."""
    if len(found) == 0:
        return found
    xyxy = found.xyxy.copy()
    xyxy[:, 0], xyxy[:, 2] = width - found.xyxy[:, 2], width - found.xyxy[:, 0]
    points = found.landmarks_xy.copy()
    points[..., 0] = width - points[..., 0]
    return FaceArrays(xyxy=xyxy, scores=found.scores, landmarks_xy=points[:, [1, 0, 2, 4, 3]])


def penalised(found: FaceArrays, penalty: float) -> FaceArrays:
    """The same detections with ``penalty`` taken off every score (clipped to [0, 1])."""
    if len(found) == 0:
        return found
    scores = np.clip(found.scores - penalty, 0.0, 1.0).astype(np.float32)
    return FaceArrays(found.xyxy, scores, found.landmarks_xy)


def smaller_than(found: FaceArrays, side_px: float) -> FaceArrays:
    """The detections whose longer box side is under ``side_px`` pixels."""
    sides = np.maximum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
    keep = sides < side_px
    return FaceArrays(found.xyxy[keep], found.scores[keep], found.landmarks_xy[keep])
