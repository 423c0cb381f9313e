"""The detection task: every face candidate of a shard, found once and cached.

Prefect caches ``detect_faces`` per shard (its key digests every image's content fingerprint,
the model's SHA-256, the score floor and the package version) and stores the record under that
key. Manifest rows name the record that holds each image's candidates, so a shard that changed
(it gained, lost or changed an image) reads the records its other images were found in and
runs the model on the new or changed images only: one record read per earlier shard, never one
record per image. The model runs under an exclusive device lease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from anon_tasks.core.errors import ImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.records import ImageDetections, ImageRef, ShardDetections
from anon_tasks.core.settings import DetectionSettings, OutputSettings
from anon_tasks.datasets.keys import detection_context_key, shard_detection_key
from anon_tasks.detection.model import load_model_file
from anon_tasks.pipeline.decoded_cache import DecodedCache
from anon_tasks.pipeline.leases import leased_detector
from anon_tasks.pipeline.stages import FetchedImage, detect_images, vanished
from anon_tasks.storage.resolved import NO_OPTIONS, ResolvedStorage

__all__ = ["detect_faces"]

_DEFAULT_DETECTION = DetectionSettings()
_DEFAULT_OUTPUT = OutputSettings()


def _shard_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    detection: DetectionSettings = parameters.get("detection") or _DEFAULT_DETECTION
    return shard_detection_key(
        parameters["images"],
        source=parameters["source"],
        model_sha256=load_model_file(detection.model_path).sha256,
        detection=detection,
        output=parameters.get("output") or _DEFAULT_OUTPUT,
    )


def _image_detections(
    item: FetchedImage, outcome: tuple[Face, ...] | Exception, score_floor: float
) -> ImageDetections:
    """The record of one image: its candidates down to ``score_floor``, or its error (logged)."""
    image = item.image
    if isinstance(outcome, FileNotFoundError):  # removed since it was listed
        get_run_logger().warning("%s vanished before it could be read", image.relative_path)
        return ImageDetections(image=image, score_floor=score_floor, error=vanished(image))
    if isinstance(outcome, Exception):
        reason = outcome.reason if isinstance(outcome, ImageError) else str(outcome)
        get_run_logger().warning("cannot read %s: %s", image.relative_path, reason)
        return ImageDetections(
            image=image,
            score_floor=score_floor,
            error=str(outcome),
            content_sha256=item.content_sha256,
        )
    frames = len(item.decoded.frames) if item.decoded is not None else 0
    return ImageDetections(
        image=image,
        faces=outcome,
        score_floor=score_floor,
        frame_count=frames,
        content_sha256=item.content_sha256,
    )


def _stored_shard(context: TaskRunContext | None, key: str) -> ShardDetections | None:
    """An earlier shard's record, or None when it is missing or unreadable."""
    store = context.result_store if context else None
    if store is None:
        return None
    try:
        if not store.exists(key):
            return None
        value = store.read(key).result
    except Exception:  # an unreadable record is recomputed, never trusted
        return None
    return value if isinstance(value, ShardDetections) else None


def _earlier_detections(
    context: TaskRunContext | None,
    images: Sequence[ImageRef],
    earlier: Mapping[str, str],
    context_key: str,
) -> dict[str, ImageDetections]:
    """The images' candidates that earlier shard runs found under the same detection context.

    Args:
        context: This task run's context (its result store).
        images: The shard's images.
        earlier: Record key by relative path, from the previous manifest rows.
        context_key: This run's ``detection_context_key``.
    """
    wanted: dict[str, dict[tuple[str, str], ImageRef]] = {}
    for image in images:
        record = earlier.get(image.relative_path)
        if record is not None:
            wanted.setdefault(record, {})[(image.relative_path, image.fingerprint)] = image
    found: dict[str, ImageDetections] = {}
    for record, by_content in wanted.items():
        shard = _stored_shard(context, record)
        if shard is None or shard.context_key != context_key:
            continue  # another model, floor, precision or version: its candidates differ
        for stored in shard.images:
            image = by_content.get((stored.image.relative_path, stored.image.fingerprint))
            if image is None:  # another image, or the same path with other content
                continue
            if stored.error is None and stored.content_sha256 is None:
                continue  # not bound to the bytes it was computed on: recompute
            found[image.relative_path] = stored
    return found


@task(
    name="detect-faces",
    cache_key_fn=_shard_cache_key,
    persist_result=True,
    # Prefect would also keep the last 1,000 records it wrote in memory (its result store's
    # LRU cache): with a record per image that grows with the dataset. They live in storage.
    cache_result_in_memory=False,
    retries=2,
    retry_delay_seconds=[2, 10],
)
def detect_faces(
    images: Sequence[ImageRef],
    source: str,
    detection: DetectionSettings = _DEFAULT_DETECTION,
    output: OutputSettings = _DEFAULT_OUTPUT,
    device_hint: int = 0,
    storage: ResolvedStorage = NO_OPTIONS,
    decoded: DecodedCache | None = None,
    earlier: Mapping[str, str] | None = None,
) -> ShardDetections:
    """Find every face candidate above the score floor in a shard of images.

    Candidates down to the detector's score floor are kept, so that any threshold at or above
    it can be applied later (by ``mask_faces``) without running the model again. Each image's
    record carries the SHA-256 of the bytes its faces were found in. Images that cannot be
    decoded are returned with their error; the shard goes on.

    Args:
        images: The shard's image references (from ``scan_source`` or ``list_images``).
        source: The dataset root the references are relative to.
        detection: Detector settings (model, quality, device); its threshold sets the floor.
        output: Its ``max_pixels``: images above it are refused before decoding.
        device_hint: Which of the available devices to try first (the flow spreads shards
            round-robin); a free device is leased exclusively for the shard's inference.
        storage: How to reach the source (``resolve_storage(run)``).
        decoded: The run's decoded-image cache: decoded pixels wait there for ``mask_faces``.
        earlier: For images earlier runs searched, the key of the shard record that holds
            their candidates (manifest rows' ``detections_key``); reused where the image's path and
            fingerprint and the detection context (``detection_context_key``) are unchanged.

    Returns:
        Detections per image, and how many images were read and inferred in this run.
    """
    logger = get_run_logger()
    context = TaskRunContext.get()
    model_sha = load_model_file(detection.model_path).sha256
    record_key = shard_detection_key(
        images, source=source, model_sha256=model_sha, detection=detection, output=output
    )
    context_key = detection_context_key(
        source=source, model_sha256=model_sha, detection=detection, output=output
    )
    found = _earlier_detections(context, images, earlier or {}, context_key)
    reused = len(found)
    missing = [image for image in images if image.relative_path not in found]
    device = None
    detector_backend = ""
    read = inferred = 0
    if missing:
        with leased_detector(detection, device_hint) as (device, detector):
            detector_backend = detector.provider
            stream = detect_images(
                detector, source, missing, storage.options, max_pixels=output.max_pixels
            )
            for item, outcome in stream:
                read += int(item.was_read)
                result = _image_detections(item, outcome, detector.score_floor)
                if result.error is None and item.decoded is not None:
                    inferred += 1
                    if decoded is not None and item.content_sha256 is not None:
                        decoded.put(item.url, item.content_sha256, item.decoded)
                found[item.image.relative_path] = result
    logger.info(
        "%d image(s): %d found by earlier runs, %d read, %d inferred%s",
        len(images),
        reused,
        read,
        inferred,
        f" on {device} ({detector_backend})" if device else "",
    )
    # Records (and whole cached shards) hold the references of the run that made them: bind
    # each to this run's reference, so its caption sidecars are today's, never a cached list.
    results = [found[image.relative_path].model_copy(update={"image": image}) for image in images]
    return ShardDetections(
        images=tuple(results),
        images_read=read,
        images_inferred=inferred,
        device=device,
        backend=detector_backend or None,
        record_key=record_key,
        context_key=context_key,
    )
