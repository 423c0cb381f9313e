"""Cache keys from content and from the settings models themselves, never from paths alone.

Two values carry them: ``shard_detection_key`` (Prefect's cache of a shard) and
``detection_context_key`` (which earlier shard records another shard may reuse) for stored
detections, and the ``RenderSpec``, the one description of what an image's output depends on,
used alike by the planner (is the output in dest up to date?) and by the mask and write tasks.

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

from pydantic import BaseModel, ConfigDict

from anon_tasks.core.records import ImageRef
from anon_tasks.core.settings import (
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    RunSettings,
    caption_note_for,
)
from anon_tasks.core.version import __version__
from anon_tasks.detection.detector import detection_floor
from anon_tasks.detection.model import load_model_file

__all__ = [
    "DETECTION_NEUTRAL_FIELDS",
    "KEY_SCHEMA",
    "OUTPUT_NEUTRAL_FIELDS",
    "RenderSpec",
    "detection_context_key",
    "shard_detection_key",
]

#: Bumped whenever what a stored record means changes (2: records carry the bytes' SHA-256;
#: 3: the render key leaves the threshold to ``planning.masks_hold``).
KEY_SCHEMA = 3

_RUN_ORGANISATION = frozenset(
    {
        "shard_size",
        "allow_failures",
        "result_storage",
        "storage_options",
        "credentials_block",
        "partition_index",
        "partition_count",
        "review_images",
    }
)

#: Fields that cannot change an output's bytes or its sidecars: where and how the work runs.
#: The threshold changes an output only through the faces it masks: the planner compares those
#: with the ones the output has (``planning.masks_hold``), so a threshold rerun renders again
#: only the images where a candidate crosses from one side of it to the other.
OUTPUT_NEUTRAL_FIELDS: Mapping[type[BaseModel], frozenset[str]] = MappingProxyType(
    {
        DetectionSettings: frozenset({"device", "intra_op_threads", "threshold"}),
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


def detection_context_key(
    *, source: str, model_sha256: str, detection: DetectionSettings, output: OutputSettings
) -> str:
    """Key of everything besides the images that stored detections depend on: records made
    under the same context key hold the same candidates for the same image content."""
    return _digest("detect-context", _detection_context(source, model_sha256, detection, output))


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


class RenderSpec(BaseModel):
    """Everything that decides an image's output bytes and sidecars, as one value.

    The planner asks it whether an output is up to date (:meth:`key`); the mask task takes the
    threshold, masking and output settings and the caption note from it; the write task records
    its parameters. Built once per run.

    Attributes:
        model_sha256: SHA-256 of the model file that found the faces.
        detection: ``threshold`` selects the faces to mask; ``quality``, ``model_path`` and
            ``device`` serve a detection again when a source changed under the run.
        masking: Method and its parameters.
        output: Encoder settings and the pixel limit.
        run: ``caption_note`` (the other run fields organise the work; see
            ``OUTPUT_NEUTRAL_FIELDS``).
    """

    model_config = ConfigDict(frozen=True)

    model_sha256: str
    detection: DetectionSettings
    masking: MaskSettings
    output: OutputSettings
    run: RunSettings

    @classmethod
    def from_settings(
        cls,
        detection: DetectionSettings | None = None,
        masking: MaskSettings | None = None,
        output: OutputSettings | None = None,
        run: RunSettings | None = None,
    ) -> RenderSpec:
        """The spec of a run with these settings (defaults for those not given).

        Example:
            >>> render = RenderSpec.from_settings(masking=MaskSettings(method="mosaic"))
            >>> masked = mask_faces(found, "data/raw", "data/clean", render)
        """
        detection = detection or DetectionSettings()
        return cls(
            model_sha256=load_model_file(detection.model_path).sha256,
            detection=detection,
            masking=masking or MaskSettings(),
            output=output or OutputSettings(),
            run=run or RunSettings(),
        )

    @property
    def caption_note(self) -> str | None:
        """The note added to the captions of images with faces, ``{masked}`` filled in."""
        return caption_note_for(self.run.caption_note, self.masking.method)

    def key(self, image: ImageRef) -> str:
        """Key of everything that determines ``image``'s output bytes and its sidecars."""
        return _digest(
            "render",
            {
                "schema": KEY_SCHEMA,
                "image": [image.relative_path, image.fingerprint],
                "sidecars": [[s.relative_path, s.fingerprint] for s in image.sidecars],
                "model": self.model_sha256,
                "settings": _fields(
                    (self.detection, self.masking, self.output, self.run), OUTPUT_NEUTRAL_FIELDS
                ),
                "version": __version__,
            },
        )
