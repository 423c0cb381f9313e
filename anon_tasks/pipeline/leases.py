"""A device leased for a stretch of inference, and the process's shared detector on it.

Detectors are cheap to make (the ONNX session is shared per process, model and device) but not
free, so one is kept per settings; the lease (``detection.devices``) keeps two runs, in this
process or another, off one device at a time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from anon_tasks.core.settings import DetectionSettings
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.detection.devices import available_devices, device_lease

__all__ = ["leased_detector"]

_detectors: dict[DetectionSettings, CenterFaceDetector] = {}
_detectors_lock = threading.Lock()


@contextlib.contextmanager
def leased_detector(
    detection: DetectionSettings, hint: int = 0
) -> Iterator[tuple[str, CenterFaceDetector]]:
    """A device leased exclusively (trying the ``hint``-th available one first) and the shared
    detector on it; the lease ends with the block.

    Example:
        >>> with leased_detector(DetectionSettings()) as (device, detector):
        ...     faces = find_faces(detector, image)
    """
    devices = available_devices(detection.device)
    start = hint % len(devices)
    with device_lease(devices[start:] + devices[:start]) as device:
        settings = detection.model_copy(update={"device": device})
        with _detectors_lock:
            if settings not in _detectors:
                _detectors[settings] = CenterFaceDetector(settings)
            detector = _detectors[settings]
        yield device, detector
