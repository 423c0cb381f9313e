"""Inference sessions: the backend that really runs, one session per model, device and precision.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even where the CUDA libraries
are missing; asking for it then silently falls back to CPU. So CUDA is chosen only when its
provider library loads, and every session is checked for the provider it really got. The
``fast`` precision runs on the CPU through OpenVINO in bfloat16 where the CPU has it
(``detection.openvino_backend``); anywhere else it runs ``exact`` and says why, once.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from anon_tasks.core.concurrency import available_cores
from anon_tasks.core.errors import ProviderError
from anon_tasks.core.settings import Precision
from anon_tasks.detection.model import ModelFile, prepare_for_inference
from anon_tasks.detection.openvino_backend import compile_bf16, openvino_unavailable_reason

__all__ = [
    "CPU_GATE",
    "DeviceSpec",
    "InferenceSession",
    "SharedExclusiveGate",
    "cuda_unavailable_reason",
    "get_session",
]

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: The fast precision's CPU backend, as sessions and summaries name it.
OPENVINO_BF16 = "OpenVINO CPU (bf16)"
_ORT_WARNING, _ORT_ERROR, _ORT_FATAL = 2, 3, 4

# ONNX Runtime's C++ logger writes straight to stderr; keep warnings out of the user's console.
ort.set_default_logger_severity(_ORT_ERROR)


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed ``device`` setting: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``cpu:N``.

    ``cpu:N`` is a logical CPU device: it shares the CPU session, and exists so that device
    allocation and leases can be exercised on hosts without GPUs.
    """

    kind: str
    device_id: int = 0

    @classmethod
    def parse(cls, device: str) -> DeviceSpec:
        device = device.strip().lower()
        if device in ("auto", "cpu", "cuda"):
            return cls(kind=device)
        kind, _, index = device.partition(":")
        if kind in ("cuda", "cpu") and index.isdigit():
            return cls(kind=kind, device_id=int(index))
        raise ProviderError(f"device={device!r} is invalid: use auto, cpu, cuda or cuda:N")

    @property
    def session_key(self) -> DeviceSpec:
        """Devices that share a session: every logical CPU device uses the one CPU session."""
        return DeviceSpec(kind="cpu") if self.kind == "cpu" else self

    @property
    def wants_cuda(self) -> bool:
        return self.kind in ("auto", "cuda")


class SharedExclusiveGate:
    """Many shared holders at once, or one exclusive holder; a waiting exclusive holder goes
    before new shared ones (so a large image is not starved by a stream of small ones)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._exclusive_waiting += 1
            self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


#: Every CPU session's runs pass this gate: single-threaded runs share the cores, one per core;
#: a multi-threaded run has them all to itself.
CPU_GATE = SharedExclusiveGate()


@dataclass(frozen=True)
class InferenceSession:
    """A ready ONNX Runtime session and what it runs on.

    On CUDA, ``lock`` serialises runs: one run (a batch) keeps the GPU busy, and callers overlap
    decoding and encoding with it. On the CPU a single-threaded session runs concurrently from
    several threads (one image per core scales better than one image on all cores: see
    docs/benchmarks.md), while a multi-threaded session's run excludes every other CPU run.
    """

    session: Any  # ort.InferenceSession, or OpenVinoSession (the same run call)
    provider: str
    device_id: int | None
    model_sha256: str
    input_name: str
    output_names: tuple[str, ...]
    threads: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def on_cpu(self) -> bool:
        """Whether runs use the CPU (ONNX Runtime's CPU provider or OpenVINO)."""
        return self.provider != CUDA_PROVIDER

    @property
    def runs_concurrently(self) -> bool:
        """Several runs of this session may proceed at once (single-threaded CPU sessions)."""
        return self.on_cpu and self.threads == 1

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on one uint8 NHWC RGB batch; returns the outputs in model order."""
        if not self.on_cpu:
            guard: contextlib.AbstractContextManager[object] = self.lock
        elif self.runs_concurrently:
            guard = CPU_GATE.shared()
        else:
            guard = CPU_GATE.exclusive()
        with guard:
            return self.session.run(list(self.output_names), {self.input_name: batch})


_cuda_lock = threading.Lock()
_cuda_reason: list[str | None] = []


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used in this process, or ``None`` when its provider library loads.

    Loads CUDA and cuDNN from the ``nvidia-*`` pip wheels first (the ``cuda`` extra), the way
    ONNX Runtime documents. The answer is computed once per process.
    """
    with _cuda_lock:
        if not _cuda_reason:
            _cuda_reason.append(_probe_cuda())
        return _cuda_reason[0]


def _probe_cuda() -> str | None:
    if CUDA_PROVIDER not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    _preload_cuda_wheels()
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if os.name == "nt":
        library = library.with_name("onnxruntime_providers_cuda.dll")
    if not library.exists():
        return f"{library.name} is missing from the onnxruntime package"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        missing = str(exc).split(":")[0].strip() or str(exc)
        return f"CUDA libraries cannot load ({missing}); install anon-tasks[cuda]"
    return None


def _preload_cuda_wheels() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip wheels (the ``cuda`` extra) when they are installed."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or importlib.util.find_spec("nvidia") is None:
        return
    chatter = io.StringIO()  # preload_dlls prints what it cannot find; keep it for the debug log
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            preload(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # best effort: loading the provider library gives the verdict
        logger.debug("onnxruntime.preload_dlls failed: %s", exc)
    if chatter.getvalue().strip():
        logger.debug("onnxruntime.preload_dlls: %s", chatter.getvalue().strip())


_sessions_lock = threading.Lock()
_sessions: dict[tuple[str, DeviceSpec, int, Precision], InferenceSession] = {}
_fast_fallbacks: set[str] = set()


def get_session(
    model: ModelFile,
    device: DeviceSpec,
    *,
    intra_op_threads: int | None = None,
    precision: Precision = Precision.EXACT,
) -> InferenceSession:
    """The process-wide session for ``model`` on ``device`` at ``precision``, built on first use.

    Raises:
        ProviderError: CUDA was asked for explicitly and cannot be used.
    """
    threads = intra_op_threads or available_cores()
    key = (model.sha256, device.session_key, threads, precision)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _build_session(model, device, threads, precision)
            _sessions[key] = session
        return session


def _fast_runs_exact(reason: str) -> None:
    """Say once per reason and process why ``precision=fast`` runs exact."""
    if reason not in _fast_fallbacks:
        _fast_fallbacks.add(reason)
        logger.info("precision=fast runs exact (fp32): %s", reason)


def _openvino_session(model_bytes: bytes, model: ModelFile, threads: int) -> InferenceSession:
    """The fast precision's CPU session: OpenVINO in bfloat16."""
    # Single-threaded runs side by side: one stream per core, one thread each; a run on every
    # core: one stream with all of them.
    streams = available_cores() if threads == 1 else 1
    compiled = compile_bf16(model_bytes, threads=max(threads, streams), streams=streams)
    logger.info("face detector on %s, %d thread(s) per run", OPENVINO_BF16, threads)
    return InferenceSession(
        session=compiled,
        provider=OPENVINO_BF16,
        device_id=None,
        model_sha256=model.sha256,
        input_name=compiled.input_name,
        output_names=compiled.output_names,
        threads=threads,
    )


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = _ORT_ERROR
    return options


def _build_session(
    model: ModelFile,
    device: DeviceSpec,
    threads: int,
    precision: Precision = Precision.EXACT,
) -> InferenceSession:
    model_bytes = prepare_for_inference(model.content)
    reason = None
    if device.wants_cuda:
        reason = cuda_unavailable_reason()
        if reason is None:
            session = _try_cuda_session(model_bytes, device, threads)
            if session is not None:
                logger.info(
                    "face detector on CUDAExecutionProvider, device %d (%d threads for CPU ops)",
                    device.device_id,
                    threads,
                )
                if precision is Precision.FAST:
                    _fast_runs_exact("no fast path on CUDA yet")
                return _wrap(session, model, CUDA_PROVIDER, device.device_id, threads)
            reason = f"a CUDA session on device {device.device_id} could not be created"
        if device.kind == "cuda":
            raise ProviderError(f"device='cuda' requested but CUDA cannot be used: {reason}")
    if precision is Precision.FAST:
        fast_reason = openvino_unavailable_reason()
        if fast_reason is None:
            return _openvino_session(model_bytes, model, threads)
        _fast_runs_exact(fast_reason)
    session = ort.InferenceSession(
        model_bytes, sess_options=_session_options(threads), providers=[CPU_PROVIDER]
    )
    why = "as requested" if device.kind == "cpu" else f"CUDA unavailable: {reason}"
    logger.info("face detector on CPUExecutionProvider, %d threads (%s)", threads, why)
    return _wrap(session, model, CPU_PROVIDER, None, threads)


def _try_cuda_session(
    model_bytes: bytes, device: DeviceSpec, threads: int
) -> ort.InferenceSession | None:
    options = _session_options(threads)
    cuda_options = {"device_id": device.device_id, "cudnn_conv_algo_search": "HEURISTIC"}
    # A failed CUDA init is logged by ONNX Runtime as an error before it falls back; we report it
    # ourselves in one line, so silence its logger for this attempt.
    ort.set_default_logger_severity(_ORT_FATAL)
    try:
        session = ort.InferenceSession(
            model_bytes,
            sess_options=options,
            providers=[(CUDA_PROVIDER, cuda_options), CPU_PROVIDER],
        )
    except Exception as exc:
        logger.debug("CUDA session failed: %s", exc)
        return None
    finally:
        ort.set_default_logger_severity(_ORT_ERROR)
    if session.get_providers()[0] != CUDA_PROVIDER:
        return None
    return session


def _wrap(
    session: ort.InferenceSession,
    model: ModelFile,
    provider: str,
    device_id: int | None,
    threads: int,
) -> InferenceSession:
    return InferenceSession(
        session=session,
        provider=provider,
        device_id=device_id,
        model_sha256=model.sha256,
        input_name=session.get_inputs()[0].name,
        output_names=tuple(output.name for output in session.get_outputs()),
        threads=threads,
    )
