"""Execution provider choice: CUDA only when it really works, one clear line, no ORT noise."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from anon_tasks.core.errors import ProviderError
from anon_tasks.core.settings import DetectionSettings
from anon_tasks.detection import runtime
from anon_tasks.detection.model import load_model_file
from anon_tasks.detection.runtime import DeviceSpec, cuda_unavailable_reason, get_session


@pytest.mark.parametrize(
    ("text", "kind", "device_id"),
    [("auto", "auto", 0), ("cpu", "cpu", 0), ("CUDA", "cuda", 0), ("cuda:3", "cuda", 3)],
)
def test_device_spec_parses(text: str, kind: str, device_id: int) -> None:
    assert DeviceSpec.parse(text) == DeviceSpec(kind=kind, device_id=device_id)


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "tpu:0"])
def test_device_spec_rejects(text: str) -> None:
    with pytest.raises(ProviderError, match="device="):
        DeviceSpec.parse(text)


def test_auto_reports_the_provider_it_really_got(caplog, capfd) -> None:
    caplog.set_level(logging.INFO, logger="anon_tasks.detection.runtime")
    session = runtime._build_session(load_model_file(), DeviceSpec("auto"), threads=1)
    assert session.provider == session.session.get_providers()[0]
    lines = [r.getMessage() for r in caplog.records if "face detector on" in r.getMessage()]
    assert len(lines) == 1
    if cuda_unavailable_reason() is None:
        assert session.provider == "CUDAExecutionProvider"
    else:
        assert session.provider == "CPUExecutionProvider"
        assert "CUDA unavailable" in lines[0]
    captured = capfd.readouterr()
    assert "onnxruntime" not in captured.err.lower()  # ORT's own error spam stays hidden
    assert "Failed to load" not in captured.out + captured.err


def test_explicit_cuda_fails_clearly_where_it_cannot_load() -> None:
    reason = cuda_unavailable_reason()
    if reason is None:
        pytest.skip("CUDA works on this host; the failure path cannot be exercised")
    with pytest.raises(ProviderError, match="device='cuda' requested"):
        runtime._build_session(load_model_file(), DeviceSpec("cuda"), threads=1)


def test_never_picks_a_provider_just_because_it_is_listed(monkeypatch) -> None:
    """A listed CUDA provider whose libraries cannot load is not used (unlike the reference)."""
    monkeypatch.setattr(runtime, "_cuda_reason", ["libcublasLt.so.13 missing (simulated)"])
    session = runtime._build_session(load_model_file(), DeviceSpec("auto"), threads=1)
    assert session.provider == "CPUExecutionProvider"


def test_sessions_are_cached_per_model_device_and_threads() -> None:
    model = load_model_file()
    first = get_session(model, DeviceSpec("cpu"), intra_op_threads=1)
    assert get_session(model, DeviceSpec("cpu"), intra_op_threads=1) is first
    assert get_session(model, DeviceSpec("cpu"), intra_op_threads=2) is not first


def test_gate_lets_shared_holders_overlap_and_exclusive_ones_run_alone() -> None:
    import threading
    import time

    from anon_tasks.detection.runtime import SharedExclusiveGate

    gate = SharedExclusiveGate()
    lock = threading.Lock()
    inside: list[str] = []
    seen: list[tuple[str, ...]] = []

    def hold(kind: str) -> None:
        with gate.shared() if kind == "shared" else gate.exclusive():
            with lock:
                inside.append(kind)
                seen.append(tuple(inside))
            time.sleep(0.02)
            with lock:
                inside.remove(kind)

    threads = [
        threading.Thread(target=hold, args=(kind,))
        for kind in ["shared", "shared", "exclusive", "shared", "shared", "exclusive", "shared"]
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.002)
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert max(len(now) for now in seen if "exclusive" not in now) >= 2  # shared ones overlap
    assert all(now == ("exclusive",) for now in seen if "exclusive" in now)


def test_single_threaded_cpu_runs_equal_multi_threaded_ones_bit_for_bit(astronaut_rgb) -> None:
    """One image per core with single-threaded runs gives the same outputs as all cores on
    one image: the choice of thread layout never changes a detection."""
    from anon_tasks.detection.centerface import network_batch, network_size_wh

    model = load_model_file()
    single = get_session(model, DeviceSpec("cpu"), intra_op_threads=1)
    multi = get_session(model, DeviceSpec("cpu"), intra_op_threads=2)
    assert single.runs_concurrently
    assert not multi.runs_concurrently
    batch = network_batch([astronaut_rgb], network_size_wh(512, 512))
    for one, other in zip(single.run(batch), multi.run(batch), strict=True):
        np.testing.assert_array_equal(one, other)


def test_cpu_detector_runs_small_images_side_by_side_and_large_ones_alone(monkeypatch) -> None:
    from anon_tasks.detection import detector as detector_module
    from anon_tasks.detection.detector import CenterFaceDetector

    monkeypatch.setattr(detector_module, "available_cores", lambda: 4)
    detector = CenterFaceDetector(DetectionSettings(device="cpu"))
    assert detector.concurrent_runs == 4
    # Alone (a plain library call), a run takes every core.
    alone = detector._session_for(1_000_000)
    assert alone.threads == 4
    assert not alone.runs_concurrently
    # Beside other threads' runs, one core each, up to the pixel limit.
    with detector_module.side_by_side_runs():
        assert detector._session_for(1_000_000) is detector._session
        assert detector._session.runs_concurrently
        wide = detector._session_for(detector_module.PARALLEL_MAX_PIXELS + 1)
    assert wide is alone
    threaded = CenterFaceDetector(DetectionSettings(device="cpu", intra_op_threads=2))
    assert threaded.concurrent_runs == 2
