"""Faces of decoded images: every frame and view searched, same-size images batched.

The batching policy lives here, not in the detector or the library facade: single-frame opaque
images that ``balanced`` quality searches in one pass are run together with others of the same
canvas size, where the device gains from it (CUDA: any size up to a pixel budget; the CPU:
small inputs only, ``detector.batch_size_for``); every other image runs alone. The
faces are the detector's candidates, down to its score floor: the threshold is applied by
whoever uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anon_tasks.core.faces import Face
from anon_tasks.core.settings import Quality
from anon_tasks.detection.boxes import merge_detections
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.detection.passes import fits_one_pass
from anon_tasks.imaging.decoded import DecodedImage, detector_views, is_opaque, to_detector_rgb

__all__ = ["batch_key", "find_faces", "find_faces_batched"]


def find_faces(detector: CenterFaceDetector, image: DecodedImage) -> tuple[Face, ...]:
    """Candidates in every frame of ``image``, each frame searched as viewers may show it.

    A transparent frame is searched in each of its views (``detector_views``) and the results
    merged; the passes are those of the detector's quality setting.
    """
    faces: list[Face] = []
    for index, frame in enumerate(image.frames):
        found = merge_detections([detector.detect_quality(view) for view in detector_views(frame)])
        faces.extend(found.to_faces(frame=index))
    return tuple(faces)


def batch_key(detector: CenterFaceDetector, image: DecodedImage) -> tuple[int, int] | None:
    """The canvas size ``image`` is batched under, or None when it runs alone.

    Only where the device gains from batches (``detector.batch_size_for`` the canvas above 1),
    and only a single opaque frame that ``balanced`` quality searches in one pass.
    """
    if (
        detector.batch_size == 1
        or len(image.frames) != 1
        or detector.settings.quality is not Quality.BALANCED
        or not is_opaque(image.frames[0])
    ):
        return None
    height, width = image.frames[0].shape[:2]
    if not fits_one_pass(height, width):
        return None
    canvas = detector.canvas_size_wh(width, height)
    return canvas if detector.batch_size_for(canvas) > 1 else None


def find_faces_batched(
    detector: CenterFaceDetector, images: Sequence[DecodedImage]
) -> list[tuple[Face, ...]]:
    """Candidates of several images, each as :func:`find_faces` gives them alone.

    Images of one :func:`batch_key` run together, in runs of the detector's batch size for their
    size (on CUDA a short run is padded, so each size has one input shape); the boxes are those
    found image by image.
    """
    results: list[tuple[Face, ...] | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for index, image in enumerate(images):
        key = batch_key(detector, image)
        if key is None:
            results[index] = find_faces(detector, image)
        else:
            groups.setdefault(key, []).append((index, to_detector_rgb(image.frames[0])))
    for key, members in groups.items():
        batch_size = detector.batch_size_for(key)
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            pad_to = batch_size if detector.pads_batches else None
            found = detector.detect_batch([rgb for _, rgb in chunk], pad_to=pad_to)
            for (index, _), faces in zip(chunk, found, strict=True):
                results[index] = faces.to_faces(frame=0)
    return [faces if faces is not None else () for faces in results]
