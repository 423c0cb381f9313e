"""anon-tasks: find and anonymise faces in image datasets, as a library and as Prefect tasks.

Names are imported lazily, so ``import anon_tasks.core.settings`` loads neither ONNX Runtime nor
Prefect; ``anon_tasks.mask_faces`` is the Prefect task (the array function is
``anon_tasks.imaging.masking.mask_faces``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from anon_tasks.core.version import __version__

_EXPORTS: dict[str, str] = {
    "AnonTasksError": "anon_tasks.core.errors",
    "ConfigurationError": "anon_tasks.core.errors",
    "ImageError": "anon_tasks.core.errors",
    "ImageDecodeError": "anon_tasks.core.errors",
    "ImageEncodeError": "anon_tasks.core.errors",
    "ImageTooLargeError": "anon_tasks.core.errors",
    "ModelError": "anon_tasks.core.errors",
    "ProviderError": "anon_tasks.core.errors",
    "UnsupportedImageError": "anon_tasks.core.errors",
    "AnonymizeMethod": "anon_tasks.core.settings",
    "DetectionSettings": "anon_tasks.core.settings",
    "MaskSettings": "anon_tasks.core.settings",
    "OutputSettings": "anon_tasks.core.settings",
    "Face": "anon_tasks.core.faces",
    "CenterFaceDetector": "anon_tasks.detection.detector",
    "Anonymizer": "anon_tasks.pipeline.anonymizer",
    "AnonymizedImage": "anon_tasks.pipeline.anonymizer",
    "decode_image": "anon_tasks.imaging.decode",
    "encode_image": "anon_tasks.imaging.encode",
    "RunSettings": "anon_tasks.core.settings",
    "Quality": "anon_tasks.core.settings",
    "Precision": "anon_tasks.core.settings",
    "ImageRef": "anon_tasks.core.records",
    "ManifestRow": "anon_tasks.core.records",
    "RunSummary": "anon_tasks.core.records",
    "list_images": "anon_tasks.orchestration.listing_tasks",
    "scan_source": "anon_tasks.orchestration.listing_tasks",
    "detect_faces": "anon_tasks.orchestration.detection_task",
    "mask_faces": "anon_tasks.orchestration.masking_task",
    "write_images": "anon_tasks.orchestration.writing_tasks",
    "remove_stale_outputs": "anon_tasks.orchestration.writing_tasks",
    "resolve_storage": "anon_tasks.orchestration.credentials",
    "RenderSpec": "anon_tasks.datasets.keys",
    "ResolvedStorage": "anon_tasks.storage.resolved",
    "SkippedEntry": "anon_tasks.core.records",
    "SidecarRefusedError": "anon_tasks.core.errors",
    "UnreadableFileError": "anon_tasks.core.errors",
    "UnsafePathError": "anon_tasks.core.errors",
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
    "Precision",
    "ProviderError",
    "Quality",
    "RenderSpec",
    "ResolvedStorage",
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
    "resolve_storage",
    "scan_source",
    "write_images",
]

if TYPE_CHECKING:
    from anon_tasks.core.errors import (
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
    from anon_tasks.core.faces import Face
    from anon_tasks.core.records import ImageRef, ManifestRow, RunSummary, SkippedEntry
    from anon_tasks.core.settings import (
        AnonymizeMethod,
        DetectionSettings,
        MaskSettings,
        OutputSettings,
        Precision,
        Quality,
        RunSettings,
    )
    from anon_tasks.datasets.keys import RenderSpec
    from anon_tasks.detection.detector import CenterFaceDetector
    from anon_tasks.imaging.decode import decode_image
    from anon_tasks.imaging.encode import encode_image
    from anon_tasks.orchestration.credentials import resolve_storage
    from anon_tasks.orchestration.detection_task import detect_faces
    from anon_tasks.orchestration.listing_tasks import list_images, scan_source
    from anon_tasks.orchestration.masking_task import mask_faces
    from anon_tasks.orchestration.writing_tasks import remove_stale_outputs, write_images
    from anon_tasks.pipeline.anonymizer import AnonymizedImage, Anonymizer
    from anon_tasks.storage.resolved import ResolvedStorage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anon_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
