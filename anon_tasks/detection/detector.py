"""The face detector: CenterFace sessions per device, run scheduling, batching and the floor.

Candidates are decoded down to a ``score_floor`` (below the user's threshold) so that stored
detections can serve any threshold at or above the floor without running the model again: NMS
visits boxes in descending score order, so boxes below a threshold never suppress boxes above it.
The network's preprocessing and decoding live in ``centerface``, the quality modes' passes in
``passes``, the box algebra in ``boxes``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import numpy as np

from anon_tasks.core.concurrency import available_cores
from anon_tasks.core.errors import ImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import DetectionSettings
from anon_tasks.detection.boxes import FaceArrays, rescaled
from anon_tasks.detection.centerface import (
    SIDE_MULTIPLE,
    decode_outputs,
    network_batch,
    network_size_wh,
    rounded_up_wh,
)
from anon_tasks.detection.model import load_model_file
from anon_tasks.detection.passes import detect_passes
from anon_tasks.detection.runtime import (
    CUDA_PROVIDER,
    DeviceSpec,
    InferenceSession,
    get_session,
)

__all__ = [
    "CPU_BATCH_MAX_PIXELS",
    "CPU_BATCH_SIZE",
    "CUDA_BATCH_PIXELS",
    "CUDA_BATCH_SIZE",
    "CUDA_CANVAS_GRID_PX",
    "PARALLEL_MAX_PIXELS",
    "SCORE_FLOOR",
    "CenterFaceDetector",
    "detection_floor",
    "side_by_side_runs",
]

logger = logging.getLogger(__name__)

#: Lowest threshold that stored detections can serve without a new inference. At 0.1 an image
#: of the WIDER dev set keeps about 74 candidates (230 at 0.05, whose suppression and records
#: cost about 10 % of an inference); a lower threshold is served by a new inference.
SCORE_FLOOR = 0.1


def detection_floor(threshold: float) -> float:
    """The score down to which detections are kept for a run at ``threshold``: the floor, or
    the threshold itself when it is lower (so a face above the threshold is never dropped)."""
    return min(SCORE_FLOOR, threshold)


#: Same-size images per model run on CUDA (see docs/benchmarks.md for the measurement).
CUDA_BATCH_SIZE = 8
#: On CUDA, the model's input canvas has sides in multiples of this many pixels: each image is
#: resized to its network size (multiples of 32, as the reference does) and placed at the
#: canvas's top left, black beyond. CUDA plans its kernels for every new input shape (about 2 s
#: each, docs/benchmarks.md); the WIDER dev set's 41 network sizes fall on 24 canvases. Over
#: that set the faces above 0.4 are the same, boxes within 0.08 px (benchmarks/input_grid.py;
#: a 128 px grid, 13 canvases, loses 3 of 2,219 faces near the bottom edges).
CUDA_CANVAS_GRID_PX = 64
#: Most network-input pixels in one CUDA run: eight 1024x1536 inputs; larger images get smaller
#: batches, down to one image (a run holds GPU memory in proportion to its pixels).
CUDA_BATCH_PIXELS = 13_000_000
#: On the CPU, images this small (network input pixels, 256 x 256) run in batches of
#: ``CPU_BATCH_SIZE`` of one size: per-run overhead is most of their cost, and a batch gives
#: each image the same candidates as a run of its own (benchmarks/throughput.py's tiny case;
#: larger inputs gain nothing, and from 384 x 288 they lose).
CPU_BATCH_MAX_PIXELS = 256 * 256
CPU_BATCH_SIZE = 8
#: CPU runs above this many input pixels use every core and run alone; smaller ones run side
#: by side, one single-threaded run per core (one CPU run holds about 190 MB per megapixel).
PARALLEL_MAX_PIXELS = 2_500_000

_thread_state = threading.local()


@contextlib.contextmanager
def side_by_side_runs() -> Iterator[None]:
    """Mark this thread's model runs as one of several running at once (one per core).

    CPU runs made inside the block are single-threaded, so that threads detecting different
    images use every core between them; outside it a CPU run uses every core itself.

    Example:
        >>> with side_by_side_runs():
        ...     faces = detector.detect(rgb)
    """
    before = getattr(_thread_state, "side_by_side", False)
    _thread_state.side_by_side = True
    try:
        yield
    finally:
        _thread_state.side_by_side = before


class CenterFaceDetector:
    """Finds faces in upright RGB images with CenterFace on ONNX Runtime.

    The ONNX session is shared per process, model and device: building many detectors is cheap.

    Example:
        >>> detector = CenterFaceDetector(DetectionSettings())
        >>> faces = detector.detect_faces(rgb_uint8)  # tuple[Face, ...] above the threshold

    Every search keeps candidates down to :attr:`score_floor` (derived from the settings'
    threshold), the one place the floor is applied; the threshold itself is applied by whoever
    uses the faces (masking), so a record serves any threshold at or above the floor.
    """

    def __init__(self, settings: DetectionSettings | None = None) -> None:
        self.settings = settings or DetectionSettings()
        self._model = load_model_file(self.settings.model_path)
        # One intra-op thread per run unless asked otherwise: on the CPU, runs of different
        # images then proceed side by side, one per core (see docs/benchmarks.md).
        self._session: InferenceSession = get_session(
            self._model,
            DeviceSpec.parse(self.settings.device),
            intra_op_threads=self.settings.intra_op_threads or 1,
            precision=self.settings.precision,
        )
        self.inference_count = 0
        #: Lowest score any search keeps (``detection_floor`` of the threshold).
        self.score_floor = detection_floor(self.settings.threshold)

    @property
    def concurrent_runs(self) -> int:
        """Model runs worth making at once from several threads: one per core on the CPU with
        single-threaded runs (cores / ``intra_op_threads`` otherwise), one on CUDA."""
        if not self._session.on_cpu:
            return 1
        return max(1, available_cores() // self._session.threads)

    def _session_for(self, pixels: int) -> InferenceSession:
        """The session for a run of ``pixels`` input pixels.

        On the CPU, a thread inside :func:`side_by_side_runs` gets the single-threaded session
        (other threads run other images on the other cores) unless the input is larger than
        ``PARALLEL_MAX_PIXELS``; every other run gets a session on all cores, which runs alone.
        """
        session = self._session
        if not session.runs_concurrently or available_cores() == 1:
            return session
        if getattr(_thread_state, "side_by_side", False) and pixels <= PARALLEL_MAX_PIXELS:
            return session
        return get_session(
            self._model,
            DeviceSpec("cpu"),
            intra_op_threads=available_cores(),
            precision=self.settings.precision,
        )

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the model file the session runs."""
        return self._session.model_sha256

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider the session runs on."""
        return self._session.provider

    @property
    def batch_size(self) -> int:
        """Most images per model run: ``CUDA_BATCH_SIZE`` on CUDA, ``CPU_BATCH_SIZE`` on the
        CPU (small inputs only: :meth:`batch_size_for`)."""
        return CUDA_BATCH_SIZE if self._session.provider == CUDA_PROVIDER else CPU_BATCH_SIZE

    @property
    def pads_batches(self) -> bool:
        """Whether batches are padded to one input shape per canvas size (CUDA, which plans
        its kernels per shape; the CPU runs any batch as it comes)."""
        return self._session.provider == CUDA_PROVIDER

    @property
    def canvas_grid_px(self) -> int:
        """Multiple of the model input's sides: ``CUDA_CANVAS_GRID_PX`` on CUDA (fewer input
        shapes to plan), 32 on the CPU (the network size itself, as the reference runs)."""
        return CUDA_CANVAS_GRID_PX if self._session.provider == CUDA_PROVIDER else SIDE_MULTIPLE

    def canvas_size_wh(self, width: int, height: int) -> tuple[int, int]:
        """The model input's size for an image of ``width`` x ``height``: its network size
        rounded up to :attr:`canvas_grid_px`. Images of one canvas size can share a run."""
        return rounded_up_wh(network_size_wh(width, height), self.canvas_grid_px)

    def batch_size_for(self, canvas_wh: tuple[int, int]) -> int:
        """Images per model run for inputs of ``canvas_wh`` pixels: on CUDA :attr:`batch_size`,
        less where the batch would exceed ``CUDA_BATCH_PIXELS``; on the CPU :attr:`batch_size`
        up to ``CPU_BATCH_MAX_PIXELS`` an input, else 1."""
        width, height = canvas_wh
        if self.pads_batches:
            return max(1, min(self.batch_size, CUDA_BATCH_PIXELS // (width * height)))
        return self.batch_size if width * height <= CPU_BATCH_MAX_PIXELS else 1

    def detect(self, rgb: np.ndarray) -> FaceArrays:
        """All faces scoring above :attr:`score_floor` in one pass over ``rgb`` (its pixels).

        Args:
            rgb: Upright image, uint8, HxWx3, RGB channel order.
        """
        return self._run([rgb], self.score_floor)[0]

    def detect_batch(
        self, images: list[np.ndarray], *, pad_to: int | None = None
    ) -> list[FaceArrays]:
        """Detect faces in images of one canvas size with one model run (faster on GPUs).

        Each image is preprocessed exactly as alone, so the boxes are those of :meth:`detect`.

        Args:
            images: Upright uint8 HxWx3 RGB images, all of one :meth:`canvas_size_wh`.
            pad_to: Run at least this many images, padding with blank ones (their outputs
                are ignored). Batched callers pass :meth:`batch_size_for` the size, so every
                batch of one size has one input shape: CUDA plans its kernels once per shape
                (about 2 s each on an H200; docs/benchmarks.md), not once per size and count.
        """
        return self._run(images, self.score_floor, pad_to=pad_to)

    def detect_quality(self, rgb: np.ndarray) -> FaceArrays:
        """Faces above :attr:`score_floor` with the passes the settings' quality asks for, merged
        (see :func:`anon_tasks.detection.passes.detect_passes`); ``balanced`` is exactly
        :meth:`detect` for images under the balanced pixel budget.

        Args:
            rgb: Upright image, uint8, HxWx3, RGB channel order.
        """
        return detect_passes(self._run_one, rgb, self.settings.quality, self.score_floor)

    def detect_faces(self, rgb: np.ndarray, *, frame: int = 0) -> tuple[Face, ...]:
        """Faces scoring above the settings' threshold in one pass, as values (library use)."""
        return self.detect(rgb).above(self.settings.threshold).to_faces(frame=frame)

    def _run_one(self, rgb: np.ndarray, score_floor: float) -> FaceArrays:
        """One model run over one image; candidates above ``score_floor`` (a pass's run)."""
        return self._run([rgb], score_floor)[0]

    def _run(
        self, images: list[np.ndarray], score_floor: float, *, pad_to: int | None = None
    ) -> list[FaceArrays]:
        """One model run over ``images`` (one canvas size); candidates above ``score_floor``,
        in each image's own pixels.

        Raises:
            ValueError: An image is not HxWx3 uint8, or the images differ in canvas size.
            ImageError: An image has no pixels.
        """
        for rgb in images:
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        if not images:
            return []
        if any(rgb.shape[0] == 0 or rgb.shape[1] == 0 for rgb in images):
            raise ImageError("image has no pixels")
        canvas_wh = self.canvas_size_wh(images[0].shape[1], images[0].shape[0])
        if any(self.canvas_size_wh(rgb.shape[1], rgb.shape[0]) != canvas_wh for rgb in images):
            raise ValueError("detect_batch needs images of one canvas size")
        rows = max(len(images), pad_to or 0)
        session = self._session_for(canvas_wh[0] * canvas_wh[1] * rows)
        outputs = session.run(network_batch(images, canvas_wh, rows=rows))
        self.inference_count += len(images)
        results = []
        for index, rgb in enumerate(images):
            height, width = rgb.shape[:2]
            net_w, net_h = network_size_wh(width, height)
            found = decode_outputs(outputs, (net_w, net_h), score_floor, index)
            results.append(rescaled(found, net_w / width, net_h / height))
        return results
