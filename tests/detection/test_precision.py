"""The precision setting: exact is the reference's fp32; fast is bfloat16 where the CPU has it,
and exact, said once in the log, wherever no faster path exists."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from anon_tasks.core.records import ImageRef
from anon_tasks.core.settings import DetectionSettings, OutputSettings, Precision, Quality
from anon_tasks.datasets.keys import detection_context_key, shard_detection_key
from anon_tasks.detection import runtime
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.detection.openvino_backend import openvino_unavailable_reason
from tests.faces import ASTRONAUT_FACE_XYXY

FAST_PATH = openvino_unavailable_reason()
needs_fast_path = pytest.mark.skipif(FAST_PATH is not None, reason=f"no fast path: {FAST_PATH}")


@needs_fast_path
@pytest.mark.parametrize("quality", [Quality.BALANCED, Quality.THOROUGH])
def test_fast_finds_the_faces_exact_finds_within_a_pixel(astronaut_rgb, quality) -> None:
    exact = CenterFaceDetector(DetectionSettings(device="cpu", quality=quality))
    fast = CenterFaceDetector(DetectionSettings(device="cpu", quality=quality, precision="fast"))
    assert fast.provider == runtime.OPENVINO_BF16
    assert exact.provider == runtime.CPU_PROVIDER
    one, other = exact.detect_quality(astronaut_rgb), fast.detect_quality(astronaut_rgb)
    one, other = one.above(0.4), other.above(0.4)
    assert len(one) == len(other) == 1
    np.testing.assert_allclose(other.xyxy, one.xyxy, atol=1.0)
    np.testing.assert_allclose(other.xyxy[0], ASTRONAUT_FACE_XYXY, atol=6.0)
    assert other.scores[0] == pytest.approx(one.scores[0], abs=0.02)


@needs_fast_path
def test_fast_runs_side_by_side_like_exact(astronaut_rgb) -> None:
    """Single-threaded fast runs proceed from several threads at once, as exact ones do."""
    from concurrent.futures import ThreadPoolExecutor

    from anon_tasks.detection.detector import side_by_side_runs

    fast = CenterFaceDetector(DetectionSettings(device="cpu", precision="fast"))
    assert fast.concurrent_runs >= 1

    def one(index: int) -> int:
        with side_by_side_runs():
            return len(fast.detect(np.roll(astronaut_rgb, 20 * index, axis=1)).above(0.4))

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(one, range(4))) == [1, 1, 1, 1]


def test_fast_without_a_fast_path_runs_exact_and_says_so_once(
    astronaut_rgb, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(runtime, "openvino_unavailable_reason", lambda: "no such path here")
    monkeypatch.setattr(runtime, "_sessions", {})
    monkeypatch.setattr(runtime, "_fast_fallbacks", set())
    with caplog.at_level(logging.INFO, logger="anon_tasks.detection.runtime"):
        first = CenterFaceDetector(DetectionSettings(device="cpu", precision="fast"))
        CenterFaceDetector(DetectionSettings(device="cpu", precision="fast", threshold=0.5))
    said = [r.getMessage() for r in caplog.records if "precision=fast runs exact" in r.getMessage()]
    assert said == ["precision=fast runs exact (fp32): no such path here"]
    assert first.provider == runtime.CPU_PROVIDER
    exact = CenterFaceDetector(DetectionSettings(device="cpu"))
    np.testing.assert_array_equal(
        first.detect(astronaut_rgb).xyxy, exact.detect(astronaut_rgb).xyxy
    )


def test_precision_is_part_of_the_detection_keys() -> None:
    """Both keys stored detections are found by: the shard's, and the context under which an
    earlier shard's candidates may be reused."""
    image = ImageRef(relative_path="a.jpg", size_bytes=1, fingerprint="f")
    common = {"source": "raw", "model_sha256": "m", "output": OutputSettings()}
    shard_keys = {
        shard_detection_key([image], detection=DetectionSettings(precision=p), **common)
        for p in Precision
    }
    context_keys = {
        detection_context_key(detection=DetectionSettings(precision=p), **common) for p in Precision
    }
    assert len(shard_keys) == len(Precision)
    assert len(context_keys) == len(Precision)


@needs_fast_path
def test_a_fast_run_hides_the_face(astronaut_rgb) -> None:
    """End to end through the library facade: fast precision masks the face exact masks."""
    import io

    from PIL import Image

    from anon_tasks.pipeline.anonymizer import Anonymizer
    from tests.faces import face_hidden

    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format="PNG")
    fast = Anonymizer(detection=DetectionSettings(device="cpu", precision="fast"))
    result = fast.anonymize_bytes(buffer.getvalue(), source="astronaut.png")
    output = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB"))
    assert len(result.faces) == 1
    assert face_hidden(astronaut_rgb, output, ASTRONAUT_FACE_XYXY)


_FIRST_RUNS_TOGETHER = """
import threading
import numpy as np
from anon_tasks.detection.model import load_model_file, prepare_for_inference
from anon_tasks.detection.openvino_backend import compile_bf16

session = compile_bf16(prepare_for_inference(load_model_file().content), threads=2, streams=2)
start = threading.Barrier(2)

def run() -> None:
    start.wait()
    session.run(session.output_names, {session.input_name: np.zeros((1, 64, 64, 3), np.uint8)})

threads = [threading.Thread(target=run) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("both ran")
"""


@needs_fast_path
@pytest.mark.parametrize("attempt", range(2))
def test_the_first_fast_runs_of_a_process_may_start_together(attempt: int) -> None:
    """OpenVINO's bindings set up their NumPy interface on a process's first run, in a call-once
    that deadlocks when two threads enter it together: the session does it when it is built."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FIRST_RUNS_TOGETHER],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "both ran" in done.stdout
