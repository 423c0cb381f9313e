"""anon-tasks: find and anonymise faces in image datasets, as a library and as Prefect tasks.

Names are imported lazily, so ``import anon_tasks.settings`` loads neither ONNX Runtime nor
Prefect; ``anon_tasks.mask_faces`` is the Prefect task (the array function is
``anon_tasks.masking.mask_faces``).
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
    "RunSettings": "anon_tasks.settings",
    "Quality": "anon_tasks.settings",
    "ImageRef": "anon_tasks.records",
    "ManifestRow": "anon_tasks.records",
    "RunSummary": "anon_tasks.records",
    "list_images": "anon_tasks.tasks",
    "detect_faces": "anon_tasks.tasks",
    "mask_faces": "anon_tasks.tasks",
    "write_images": "anon_tasks.tasks",
    "scan_source": "anon_tasks.tasks",
    "remove_stale_outputs": "anon_tasks.tasks",
    "SkippedEntry": "anon_tasks.records",
    "SidecarRefusedError": "anon_tasks.errors",
    "UnreadableFileError": "anon_tasks.errors",
    "UnsafePathError": "anon_tasks.errors",
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
    "ImageRef",
    "ImageTooLargeError",
    "ManifestRow",
    "MaskSettings",
    "ModelError",
    "OutputSettings",
    "ProviderError",
    "Quality",
    "RunSettings",
    "RunSummary",
    "SidecarRefusedError",
    "SkippedEntry",
    "UnreadableFileError",
    "UnsafePathError",
    "UnsupportedImageError",
    "__version__",
    "decode_image",
    "detect_faces",
    "encode_image",
    "list_images",
    "mask_faces",
    "remove_stale_outputs",
    "scan_source",
    "write_images",
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
        SidecarRefusedError,
        UnreadableFileError,
        UnsafePathError,
        UnsupportedImageError,
    )
    from anon_tasks.records import ImageRef, ManifestRow, RunSummary, SkippedEntry
    from anon_tasks.settings import (
        AnonymizeMethod,
        DetectionSettings,
        MaskSettings,
        OutputSettings,
        Quality,
        RunSettings,
    )
    from anon_tasks.tasks import (
        detect_faces,
        list_images,
        mask_faces,
        remove_stale_outputs,
        scan_source,
        write_images,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anon_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
