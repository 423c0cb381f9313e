"""The detection pipeline: bounded ordered map, batched detection equal to single images."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from anon_tasks.core.concurrency import ordered_map
from anon_tasks.core.errors import ImageDecodeError, UnsafePathError
from anon_tasks.core.records import ImageRef
from anon_tasks.core.settings import DetectionSettings, OutputSettings
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.imaging.decode import decode_image
from anon_tasks.pipeline.finding import find_faces, find_faces_batched
from anon_tasks.pipeline.stages import detect_images

MAX_PIXELS = OutputSettings().max_pixels


def _detector(threshold: float = 0.4) -> CenterFaceDetector:
    return CenterFaceDetector(DetectionSettings(device="cpu", threshold=threshold))


# --- ordered_map ------------------------------------------------------------------------------


def test_ordered_map_keeps_order_and_bounds_what_is_in_flight() -> None:
    lock = threading.Lock()
    running = 0
    most = 0

    def slow_square(value: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * (value % 3))  # finish out of order
        with lock:
            running -= 1
        return value * value

    started = []

    def source():
        for value in range(40):
            started.append(value)
            yield value

    results = []
    for result in ordered_map(slow_square, source(), threads=4, ahead=6):
        results.append(result)
        # Never more than `ahead` items taken from the source beyond what was consumed.
        assert len(started) - len(results) <= 6
    assert results == [v * v for v in range(40)]
    assert 1 < most <= 4


def test_ordered_map_raises_at_the_failing_item_and_stops_early() -> None:
    def fail_on_three(value: int) -> int:
        if value == 3:
            raise ValueError("three")
        return value

    stream = ordered_map(fail_on_three, range(100), threads=2, ahead=4)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(stream)


def test_ordered_map_closed_early_takes_no_more_items() -> None:
    taken = []

    def source():
        for value in range(1000):
            taken.append(value)
            yield value

    stream = ordered_map(lambda v: v, source(), threads=2, ahead=3)
    assert next(stream) == 0
    stream.close()
    assert len(taken) <= 4


def test_ordered_map_refuses_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(ordered_map(lambda v: v, [1], threads=0, ahead=1))


# --- batched detection ------------------------------------------------------------------------


@pytest.fixture
def batching(monkeypatch):
    """The CPU detector batching like a GPU one: one model run at a time, 4 same-size images
    per run."""
    monkeypatch.setattr(CenterFaceDetector, "batch_size", property(lambda self: 4))
    monkeypatch.setattr(CenterFaceDetector, "pads_batches", property(lambda self: True))
    monkeypatch.setattr(CenterFaceDetector, "concurrent_runs", property(lambda self: 1))


def _photos(astronaut_rgb: np.ndarray) -> list[np.ndarray]:
    """Real faces in a few sizes, several images of each size, in mixed order."""
    photos = []
    for index in range(9):
        size = ((512, 512), (640, 480), (480, 700))[index % 3]
        shifted = np.roll(astronaut_rgb, 40 * index, axis=1)
        photos.append(cv2.resize(shifted, size, interpolation=cv2.INTER_AREA))
    return photos


def test_batches_give_the_faces_of_single_images(batching, astronaut_rgb) -> None:
    detector = _detector(threshold=0.05)
    assert detector.batch_size == 4
    images = [
        decode_image(cv2.imencode(".png", cv2.cvtColor(p, cv2.COLOR_RGB2BGR))[1].tobytes())
        for p in _photos(astronaut_rgb)
    ]
    runs_before = detector.inference_count
    batched = find_faces_batched(detector, images)
    single = [find_faces(detector, image) for image in images]
    assert detector.inference_count - runs_before == 2 * len(images)
    assert sum(len(faces) for faces in single) >= len(images)  # a face in every photo
    for one, other in zip(batched, single, strict=True):
        assert len(one) == len(other)
        for a, b in zip(one, other, strict=True):
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_a_short_batch_is_padded_to_one_shape_per_size(
    batching, model_inputs, astronaut_rgb
) -> None:
    """Batched runs of one size always have one input shape (CUDA plans kernels per shape), and
    the blank rows change no face; an image run alone is not padded."""
    detector = _detector(threshold=0.1)
    photos = [np.roll(astronaut_rgb, 60 * index, axis=1) for index in range(3)]
    images = [
        decode_image(cv2.imencode(".png", cv2.cvtColor(p, cv2.COLOR_RGB2BGR))[1].tobytes())
        for p in photos
    ]
    alone = [find_faces(detector, image) for image in images]
    assert model_inputs == [(1, 512, 512, 3)] * 3
    padded = find_faces_batched(detector, images)
    assert model_inputs[3:] == [(4, 512, 512, 3)]
    for one, other in zip(padded, alone, strict=True):
        assert len(one) == len(other) >= 1
        for a, b in zip(one, other, strict=True):
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)


def test_large_images_get_smaller_batches(batching, monkeypatch) -> None:
    from anon_tasks.detection import detector as detector_module

    detector = CenterFaceDetector(DetectionSettings(device="cpu"))
    monkeypatch.setattr(detector_module, "CUDA_BATCH_PIXELS", 1_000_000)
    assert detector.batch_size_for((512, 384)) == 4
    assert detector.batch_size_for((1024, 512)) == 1
    assert detector.batch_size_for((4000, 3000)) == 1


def test_nearby_sizes_share_a_canvas_and_keep_their_faces(
    batching, model_inputs, astronaut_rgb, monkeypatch
) -> None:
    """With CUDA's 64 px canvas grid, images 480 and 512 px tall at network size run in one
    512 x 512 batch (the shorter at the top left, black below) and keep the faces each had at
    its own network size."""
    from anon_tasks.detection import detector as detector_module

    sizes = [(512, 512), (512, 470), (500, 500), (512, 450)]  # network heights 512/480/512/480
    photos = [
        cv2.resize(np.roll(astronaut_rgb, 40 * index, axis=1), size, interpolation=cv2.INTER_AREA)
        for index, size in enumerate(sizes)
    ]
    images = [
        decode_image(cv2.imencode(".png", cv2.cvtColor(p, cv2.COLOR_RGB2BGR))[1].tobytes())
        for p in photos
    ]
    detector = _detector()
    reference = [find_faces(detector, image) for image in images]
    assert sorted(set(model_inputs)) == [(1, 480, 512, 3), (1, 512, 512, 3)]
    grid = detector_module.CUDA_CANVAS_GRID_PX
    monkeypatch.setattr(CenterFaceDetector, "canvas_grid_px", property(lambda self: grid))
    model_inputs.clear()

    on_canvas = find_faces_batched(detector, images)

    assert model_inputs == [(4, 512, 512, 3)]
    for found, expected in zip(on_canvas, reference, strict=True):
        assert len(found) == len(expected) >= 1
        for a, b in zip(found, expected, strict=True):
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.5)
            assert a.score == pytest.approx(b.score, abs=0.01)


def test_mixed_sizes_run_in_full_batches_of_one_size(
    batching, model_inputs, astronaut_rgb, tmp_path
) -> None:
    """Images of three sizes in turn (as in a real dataset) still make full batches."""
    photos = _photos(astronaut_rgb) + _photos(astronaut_rgb)[::-1] + _photos(astronaut_rgb)[:6]
    refs = []
    for index, photo in enumerate(photos):
        name = f"p{index}.png"
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        refs.append(ImageRef(relative_path=name, size_bytes=1, fingerprint=str(index)))
    detector = _detector()

    results = list(detect_images(detector, str(tmp_path), refs, {}, max_pixels=MAX_PIXELS))

    assert [fetched.image for fetched, _ in results] == refs
    # 24 images, 8 of each size: two full runs per size, none padded.
    assert sorted(model_inputs) == sorted(
        [(4, 512, 512, 3)] * 2 + [(4, 480, 640, 3)] * 2 + [(4, 704, 480, 3)] * 2
    )
    for fetched, outcome in results:
        expected = find_faces(detector, fetched.decoded)
        assert len(outcome) == len(expected) >= 1
        for a, b in zip(outcome, expected, strict=True):
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)


def test_a_rare_size_is_not_held_back_past_the_window(
    batching, model_inputs, astronaut_rgb, tmp_path
) -> None:
    """One image of its size among many of another runs (padded) once the window is full,
    instead of waiting for the end: what is held stays bounded."""
    from anon_tasks.pipeline import stages as pipeline

    rare = cv2.resize(astronaut_rgb, (480, 700), interpolation=cv2.INTER_AREA)
    names = ["rare.png"] + [f"c{index}.png" for index in range(40)]
    cv2.imwrite(str(tmp_path / "rare.png"), cv2.cvtColor(rare, cv2.COLOR_RGB2BGR))
    for index in range(40):
        common = np.roll(astronaut_rgb, 25 * index, axis=1)
        cv2.imwrite(str(tmp_path / names[index + 1]), cv2.cvtColor(common, cv2.COLOR_RGB2BGR))
    refs = [ImageRef(relative_path=n, size_bytes=1, fingerprint=n) for n in names]
    detector = _detector()

    stream = detect_images(detector, str(tmp_path), refs, {}, max_pixels=MAX_PIXELS)
    first = next(stream)
    assert first[0].image.relative_path == "rare.png"
    assert len(first[1]) >= 1
    window = pipeline.BATCH_WINDOW_BATCHES * 4
    # The rare image ran alone (padded) after at most a window of common ones.
    assert model_inputs.index((4, 704, 480, 3)) <= window // 4
    assert len(list(stream)) == 40
    stream.close()


def test_held_images_are_bounded_in_bytes_too(
    batching, astronaut_rgb, tmp_path, monkeypatch
) -> None:
    """Large photos of all different sizes are not held by the dozen waiting for batches."""
    from anon_tasks.detection.runtime import InferenceSession
    from anon_tasks.pipeline import stages as pipeline

    # Room for about two of these images' pixels (512 x 512 x 3 = 786 KB each).
    monkeypatch.setattr(pipeline, "BATCH_WINDOW_BYTES", 2 * 800_000)
    events: list[str] = []
    real_key, real_run = pipeline.batch_key, InferenceSession.run

    def recording_key(detector, image):
        events.append("taken")
        return real_key(detector, image)

    def recording_run(self, batch):
        events.append("run")
        return real_run(self, batch)

    monkeypatch.setattr(pipeline, "batch_key", recording_key)
    monkeypatch.setattr(InferenceSession, "run", recording_run)
    names = []
    for index in range(6):
        size = (512 + 32 * index, 512)  # six network sizes: no batch ever fills
        photo = cv2.resize(np.roll(astronaut_rgb, 30 * index, axis=1), size)
        names.append(f"s{index}.png")
        cv2.imwrite(str(tmp_path / names[-1]), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    refs = [ImageRef(relative_path=n, size_bytes=1, fingerprint=n) for n in names]
    detector = _detector()

    results = list(detect_images(detector, str(tmp_path), refs, {}, max_pixels=MAX_PIXELS))

    assert [fetched.image.relative_path for fetched, _ in results] == names
    assert all(len(faces) >= 1 for _, faces in results)
    assert events.count("run") == 6
    # The first image ran once the third was taken, not after all six (the image window
    # alone, 16 images, would have held them all).
    assert events.index("run") <= 3


def test_detect_images_streams_faces_and_errors_in_order(batching, astronaut_rgb, tmp_path) -> None:
    photos = _photos(astronaut_rgb)
    refs = []
    for index, photo in enumerate(photos):
        name = f"p{index}.jpg"
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        refs.append(ImageRef(relative_path=name, size_bytes=1, fingerprint=str(index)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    refs.insert(3, ImageRef(relative_path="broken.jpg", size_bytes=12, fingerprint="b"))
    refs.insert(5, ImageRef(relative_path="gone.jpg", size_bytes=1, fingerprint="g"))
    refs.insert(7, ImageRef(relative_path="../escape.jpg", size_bytes=1, fingerprint="e"))
    detector = _detector()

    results = list(detect_images(detector, str(tmp_path), refs, {}, max_pixels=MAX_PIXELS))

    assert [fetched.image for fetched, _ in results] == refs
    outcomes = {fetched.image.relative_path: outcome for fetched, outcome in results}
    assert isinstance(outcomes["broken.jpg"], ImageDecodeError)
    assert isinstance(outcomes["gone.jpg"], FileNotFoundError)
    assert isinstance(outcomes["../escape.jpg"], UnsafePathError)
    for fetched, outcome in results:
        if fetched.image.relative_path.startswith("p"):
            assert fetched.was_read
            expected = find_faces(detector, fetched.decoded)
            assert len(outcome) == len(expected) >= 1
            for a, b in zip(outcome, expected, strict=True):
                np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)


_HEAP_PROBE = """
import sys
import numpy as np
from anon_tasks.pipeline.memory import limit_heap_growth
if sys.argv[1] == "limited":
    assert limit_heap_growth() and limit_heap_growth()
for _ in range(3):
    freed = np.empty(4 * 1024 * 1024, np.uint8)
    del freed
print(np.empty(2 * 1024 * 1024, np.uint8).ctypes.data % 4096)
"""


def test_heap_growth_limit_keeps_image_sized_buffers_on_their_own_mappings() -> None:
    """glibc raises its mmap threshold past 4 MB once such a buffer is freed and serves the
    next 2 MB buffer from a heap; fixed at 1 MiB, that buffer still has its own mapping
    (glibc's mapped chunks start 16 bytes into a page). Fresh processes: a heap's history
    decides where a buffer lands."""
    import subprocess
    import sys

    def offset(mode: str) -> int:
        probe = [sys.executable, "-c", _HEAP_PROBE, mode]
        return int(subprocess.run(probe, check=True, capture_output=True, text=True).stdout)

    assert offset("limited") == 16
    assert offset("default") != 16


def test_small_files_share_cpu_runs_with_the_faces_of_single_runs(
    model_inputs, astronaut_rgb, tmp_path
) -> None:
    """On the CPU (no monkeypatching), consecutive small files go to a thread together and
    inputs of one small size share a model run; every image keeps the candidates of a run of
    its own, and a bad file among them fails alone."""
    detector = _detector(threshold=0.05)
    assert detector.concurrent_runs > 1 or detector.batch_size > 1
    refs = []
    for index in range(12):
        size = (160, 120) if index % 4 else (200, 150)  # two network sizes, mixed
        photo = cv2.resize(np.roll(astronaut_rgb, 25 * index, axis=1), size)
        name = f"small{index:02d}.jpg"
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        refs.append(
            ImageRef(
                relative_path=name, size_bytes=(tmp_path / name).stat().st_size, fingerprint=name
            )
        )
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    refs.insert(5, ImageRef(relative_path="broken.jpg", size_bytes=12, fingerprint="b"))

    results = list(detect_images(detector, str(tmp_path), refs, {}, max_pixels=MAX_PIXELS))

    assert [fetched.image for fetched, _ in results] == refs
    if detector.concurrent_runs > 1:  # the CPU path: batched runs of the small inputs
        assert any(shape[0] > 1 for shape in model_inputs)
        assert all(shape[0] <= detector.batch_size for shape in model_inputs)
    single_before = len(model_inputs)
    for fetched, outcome in results:
        if fetched.image.relative_path == "broken.jpg":
            assert isinstance(outcome, ImageDecodeError)
            continue
        alone = detector.detect(fetched.decoded.frames[0])
        assert len(outcome) == len(alone.scores)
        for face, score, box in zip(outcome, alone.scores, alone.xyxy, strict=True):
            assert face.score == pytest.approx(float(score), abs=1e-6)
            np.testing.assert_allclose(face.xyxy, box, atol=1e-4)
    assert sum(len(outcome) for _, outcome in results if isinstance(outcome, tuple)) >= 11
    assert all(shape[0] == 1 for shape in model_inputs[single_before:])


def test_large_files_are_never_grouped() -> None:
    from anon_tasks.pipeline.stages import SMALL_FILE_BYTES, _small_file_chunks

    sizes = [10, 20, SMALL_FILE_BYTES + 1, 30, 40, 50, 60, 70, SMALL_FILE_BYTES * 10, 5]
    refs = [
        ImageRef(relative_path=f"{i}", size_bytes=s, fingerprint="f") for i, s in enumerate(sizes)
    ]
    chunks = list(_small_file_chunks(refs, 3))
    assert [ref for chunk in chunks for ref in chunk] == refs
    assert [len(chunk) for chunk in chunks] == [2, 1, 3, 2, 1, 1]
    assert all(
        len(chunk) == 1 for chunk in chunks if any(r.size_bytes > SMALL_FILE_BYTES for r in chunk)
    )
