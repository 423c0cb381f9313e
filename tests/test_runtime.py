"""Execution provider choice: CUDA only when it really works, one clear line, no ORT noise."""

from __future__ import annotations

import logging

import pytest

from anon_tasks import runtime
from anon_tasks.errors import ProviderError
from anon_tasks.model import load_model_file
from anon_tasks.runtime import DeviceSpec, cuda_unavailable_reason, get_session


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
    caplog.set_level(logging.INFO, logger="anon_tasks.runtime")
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
