"""Box algebra: greedy NMS against a table, and the mappings between pixel grids."""

from __future__ import annotations

import numpy as np
import pytest

from anon_tasks.detection.boxes import (
    FaceArrays,
    merge_detections,
    mirrored,
    nms_xyxy,
    penalised,
    rescaled,
    shifted,
    smaller_than,
)


def two_faces() -> FaceArrays:
    points = np.arange(20, dtype=np.float32).reshape(2, 5, 2)
    return FaceArrays(
        xyxy=np.array([[10, 20, 50, 80], [100, 0, 110, 8]], np.float32),
        scores=np.array([0.9, 0.45], np.float32),
        landmarks_xy=points,
    )


@pytest.mark.parametrize(
    ("boxes", "scores", "expected"),
    [
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.9, 0.8], [0]),  # IoU 0.68: suppressed
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.9], [1, 0]),  # disjoint: both, by score
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], [0]),  # IoU 50/150 = 0.33 >= 0.3
        ([[0, 0, 10, 10], [7, 0, 17, 10]], [0.9, 0.8], [0, 1]),  # IoU 0.18: kept
        ([[0, 0, 0, 0], [0, 0, 0, 0]], [0.9, 0.8], [0, 1]),  # empty boxes: no division error
    ],
)
def test_nms_table(boxes, scores, expected) -> None:
    keep = nms_xyxy(np.array(boxes, np.float32), np.array(scores, np.float32))
    assert keep.tolist() == expected


def test_above_keeps_order_and_drops_the_threshold_itself() -> None:
    found = two_faces()
    assert len(found.above(0.45)) == 1
    assert found.above(0.4).scores.tolist() == pytest.approx([0.9, 0.45])
    assert len(FaceArrays.empty().above(0.0)) == 0


def test_rescaled_divides_boxes_and_landmarks_by_the_scale() -> None:
    found = two_faces()
    half = rescaled(found, 2.0, 4.0)
    np.testing.assert_array_equal(half.xyxy[0], [5, 5, 25, 20])
    np.testing.assert_array_equal(half.landmarks_xy[0, 1], [1.0, 0.75])
    assert half.scores is found.scores
    empty = FaceArrays.empty()
    assert rescaled(empty, 2.0, 2.0) is empty


def test_shifted_moves_boxes_and_landmarks() -> None:
    moved = shifted(two_faces(), 3, 7)
    np.testing.assert_array_equal(moved.xyxy[1], [103, 7, 113, 15])
    np.testing.assert_array_equal(moved.landmarks_xy[0, 0], [3, 8])


def test_mirrored_twice_is_the_identity_and_swaps_left_and_right() -> None:
    found = two_faces()
    once = mirrored(found, 200)
    np.testing.assert_array_equal(once.xyxy[0], [150, 20, 190, 80])
    # Left eye and right eye, left and right mouth corners trade places.
    np.testing.assert_array_equal(once.landmarks_xy[0, 0], [200 - 2, 3])
    twice = mirrored(once, 200)
    np.testing.assert_array_equal(twice.xyxy, found.xyxy)
    np.testing.assert_array_equal(twice.landmarks_xy, found.landmarks_xy)


def test_penalised_lowers_scores_within_zero_and_one() -> None:
    lowered = penalised(two_faces(), 0.5)
    np.testing.assert_allclose(lowered.scores, [0.4, 0.0], atol=1e-6)
    assert lowered.scores.dtype == np.float32


def test_smaller_than_keeps_faces_by_their_longer_side() -> None:
    kept = smaller_than(two_faces(), 60)
    np.testing.assert_array_equal(kept.xyxy, [[100, 0, 110, 8]])
    assert len(smaller_than(two_faces(), 61)) == 2


def test_merge_suppresses_across_parts() -> None:
    found = two_faces()
    copy = FaceArrays(found.xyxy + 1, found.scores - 0.1, found.landmarks_xy)
    merged = merge_detections([copy, FaceArrays.empty(), found])
    np.testing.assert_array_equal(merged.xyxy, found.xyxy)
    assert len(merge_detections([])) == 0
