"""anon-tasks: find and anonymise faces in image datasets, as a library and as Prefect tasks.

Names are imported lazily, so ``import anon_tasks.settings`` does not load ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AnonTasksError": "anon_tasks.errors",
    "ConfigurationError": "anon_tasks.errors",
    "ImageError": "anon_tasks.errors",
    "ImageDecodeError": "anon_tasks.errors",
    "ImageEncodeError": "anon_tasks.errors",
    "ImageTooLargeError": "anon_tasks.errors",
    "ModelError": "anon_tasks.errors",
    "ProviderError": "anon_tasks.errors",
    "UnsupportedImageError": "anon_tasks.errors",
    "AnonymizeMethod": "anon_tasks.settings",
    "DetectionSettings": "anon_tasks.settings",
    "MaskSettings": "anon_tasks.settings",
    "OutputSettings": "anon_tasks.settings",
    "Face": "anon_tasks.detections",
    "CenterFaceDetector": "anon_tasks.detector",
    "Anonymizer": "anon_tasks.anonymizer",
    "AnonymizedImage": "anon_tasks.anonymizer",
    "decode_image": "anon_tasks.codec",
    "encode_image": "anon_tasks.codec",
    "mask_faces": "anon_tasks.masking",
}

__all__ = [
    "AnonTasksError",
    "AnonymizeMethod",
    "AnonymizedImage",
    "Anonymizer",
    "CenterFaceDetector",
    "ConfigurationError",
    "DetectionSettings",
    "Face",
    "ImageDecodeError",
    "ImageEncodeError",
    "ImageError",
    "ImageTooLargeError",
    "MaskSettings",
    "ModelError",
    "OutputSettings",
    "ProviderError",
    "UnsupportedImageError",
    "__version__",
    "decode_image",
    "encode_image",
    "mask_faces",
]

if TYPE_CHECKING:
    from anon_tasks.anonymizer import AnonymizedImage, Anonymizer
    from anon_tasks.codec import decode_image, encode_image
    from anon_tasks.detections import Face
    from anon_tasks.detector import CenterFaceDetector
    from anon_tasks.errors import (
        AnonTasksError,
        ConfigurationError,
        ImageDecodeError,
        ImageEncodeError,
        ImageError,
        ImageTooLargeError,
        ModelError,
        ProviderError,
        UnsupportedImageError,
    )
    from anon_tasks.masking import mask_faces
    from anon_tasks.settings import (
        AnonymizeMethod,
        DetectionSettings,
        MaskSettings,
        OutputSettings,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anon_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
