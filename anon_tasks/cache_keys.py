"""Cache keys from content, never from paths alone.

A key digests everything that determines a result: the image's content fingerprint, the model's
SHA-256, every parameter that changes the output, and the package version. Change any of them and
the key changes; a file rewritten in place under the same name gets a new key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from anon_tasks import __version__
from anon_tasks.records import ImageRef
from anon_tasks.settings import MaskSettings, OutputSettings

__all__ = ["detection_key", "render_key", "shard_detection_key"]


def _digest(kind: str, payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return f"anon-{kind}-" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _detection_context(
    source: str, model_sha256: str, score_floor: float, max_pixels: int, quality: str
) -> dict[str, object]:
    """Everything besides the images themselves that determines stored detections."""
    return {
        "quality": quality,
        "source": source,
        "model": model_sha256,
        "floor": score_floor,
        "max_pixels": max_pixels,
        "version": __version__,
    }


def detection_key(
    image: ImageRef,
    *,
    source: str,
    model_sha256: str,
    score_floor: float,
    max_pixels: int,
    quality: str = "balanced",
) -> str:
    """Key of one image's stored detections."""
    context = _detection_context(source, model_sha256, score_floor, max_pixels, quality)
    return _digest("detect", {**context, "image": [image.relative_path, image.fingerprint]})


def shard_detection_key(
    images: Iterable[ImageRef],
    *,
    source: str,
    model_sha256: str,
    score_floor: float,
    max_pixels: int,
    quality: str = "balanced",
) -> str:
    """Key of a whole shard's detections: one cache lookup when nothing in it changed."""
    context = _detection_context(source, model_sha256, score_floor, max_pixels, quality)
    listed = [[image.relative_path, image.fingerprint] for image in images]
    return _digest("detect-shard", {**context, "images": listed})


def render_key(
    image: ImageRef,
    *,
    model_sha256: str,
    threshold: float,
    masking: MaskSettings,
    output: OutputSettings,
    caption_note: str | None,
) -> str:
    """Key of everything that determines an image's output bytes and its sidecars."""
    return _digest(
        "render",
        {
            "image": [image.relative_path, image.fingerprint],
            "sidecars": [[s.relative_path, s.fingerprint] for s in image.sidecars],
            "model": model_sha256,
            "threshold": threshold,
            "masking": masking.model_dump(mode="json"),
            "output": output.model_dump(mode="json"),
            "caption_note": caption_note,
            "version": __version__,
        },
    )
