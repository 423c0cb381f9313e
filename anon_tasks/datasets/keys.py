"""Cache keys from content and from the settings models themselves, never from paths alone.

A key digests everything that determines a result: the image's content fingerprint, the model's
SHA-256, every settings field that can change the result, and the package version. Keys are
derived from the settings models' fields, not from hand-written lists of them: a field added
to a model enters every key unless it is declared below as unable to change that result. A test
walks every field of every settings model and fails when a field is in neither.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from pydantic import BaseModel

from anon_tasks.core.records import ImageRef
from anon_tasks.core.settings import DetectionSettings, MaskSettings, OutputSettings, RunSettings
from anon_tasks.core.version import __version__
from anon_tasks.detection.detector import detection_floor

__all__ = [
    "DETECTION_NEUTRAL_FIELDS",
    "KEY_SCHEMA",
    "OUTPUT_NEUTRAL_FIELDS",
    "detection_key",
    "render_key",
    "shard_detection_key",
]

#: Bumped whenever what a stored record means changes (2: records carry the bytes' SHA-256).
KEY_SCHEMA = 2

_RUN_ORGANISATION = frozenset(
    {
        "shard_size",
        "allow_failures",
        "result_storage",
        "storage_options",
        "credentials_block",
        "partition_index",
        "partition_count",
    }
)

#: Fields that cannot change an output's bytes or its sidecars: where and how the work runs.
OUTPUT_NEUTRAL_FIELDS: Mapping[type[BaseModel], frozenset[str]] = MappingProxyType(
    {
        DetectionSettings: frozenset({"device", "intra_op_threads"}),
        MaskSettings: frozenset(),
        OutputSettings: frozenset(),
        RunSettings: _RUN_ORGANISATION,
    }
)

#: Fields that cannot change stored detections. The threshold enters as its score floor
#: (candidates are kept down to the floor, so thresholds above it share one record).
DETECTION_NEUTRAL_FIELDS: Mapping[type[BaseModel], frozenset[str]] = MappingProxyType(
    {
        DetectionSettings: frozenset({"device", "intra_op_threads", "threshold"}),
        MaskSettings: frozenset(MaskSettings.model_fields),
        OutputSettings: frozenset(OutputSettings.model_fields) - {"max_pixels"},
        RunSettings: frozenset(RunSettings.model_fields),
    }
)


def _digest(kind: str, payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"anon-{kind}-" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fields(
    settings: Iterable[BaseModel], neutral: Mapping[type[BaseModel], frozenset[str]]
) -> dict[str, object]:
    """Every non-neutral field of each settings model, as JSON values, by model name."""
    dumped: dict[str, object] = {}
    for model in settings:
        skip = neutral[type(model)]
        dumped[type(model).__name__] = {
            name: value for name, value in model.model_dump(mode="json").items() if name not in skip
        }
    return dumped


def _detection_context(
    source: str, model_sha256: str, detection: DetectionSettings, output: OutputSettings
) -> dict[str, object]:
    """Everything besides the images themselves that determines stored detections."""
    return {
        "schema": KEY_SCHEMA,
        "source": source,
        "model": model_sha256,
        "floor": detection_floor(detection.threshold),
        "settings": _fields((detection, output), DETECTION_NEUTRAL_FIELDS),
        "version": __version__,
    }


def detection_key(
    image: ImageRef,
    *,
    source: str,
    model_sha256: str,
    detection: DetectionSettings,
    output: OutputSettings,
) -> str:
    """Key of one image's stored detections."""
    context = _detection_context(source, model_sha256, detection, output)
    return _digest("detect", {**context, "image": [image.relative_path, image.fingerprint]})


def shard_detection_key(
    images: Iterable[ImageRef],
    *,
    source: str,
    model_sha256: str,
    detection: DetectionSettings,
    output: OutputSettings,
) -> str:
    """Key of a whole shard's detections: one cache lookup when nothing in it changed."""
    context = _detection_context(source, model_sha256, detection, output)
    # Sidecars too: a cached shard hands its image references to masking, captions included.
    listed = [
        [
            image.relative_path,
            image.fingerprint,
            [[s.relative_path, s.fingerprint] for s in image.sidecars],
        ]
        for image in images
    ]
    return _digest("detect-shard", {**context, "images": listed})


def render_key(
    image: ImageRef,
    *,
    model_sha256: str,
    detection: DetectionSettings,
    masking: MaskSettings,
    output: OutputSettings,
    run: RunSettings,
) -> str:
    """Key of everything that determines an image's output bytes and its sidecars."""
    return _digest(
        "render",
        {
            "schema": KEY_SCHEMA,
            "image": [image.relative_path, image.fingerprint],
            "sidecars": [[s.relative_path, s.fingerprint] for s in image.sidecars],
            "model": model_sha256,
            "settings": _fields((detection, masking, output, run), OUTPUT_NEUTRAL_FIELDS),
            "version": __version__,
        },
    )
