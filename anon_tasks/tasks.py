"""Prefect tasks: list, detect, mask and write, each a thin wrapper over the library core.

Usable one by one in your own flow, or composed by ``anon_tasks.flows.anonymize_dataset``.
Between tasks travel small frozen values (image references, detections, manifest rows); pixels
stay inside a task. Encoded output bytes pass from ``mask_faces`` to ``write_images`` in memory
and are never persisted as results.

Caching: ``detect_faces`` is cached per shard by Prefect (its key digests every image's content
fingerprint, the model's SHA-256, the score floor and the package version), and each image's
detections are also stored under their own key in the same result storage, so a shard that
gains one image runs the model on that image only. ``mask_faces`` skips an image whose output in
dest still carries the fingerprint and render key the previous manifest recorded for it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from anon_tasks import __version__
from anon_tasks.anonymizer import Anonymizer
from anon_tasks.cache_keys import detection_key, render_key, shard_detection_key
from anon_tasks.captions import add_caption_note
from anon_tasks.concurrency import ordered_map, pipeline_threads
from anon_tasks.dataset import list_dataset
from anon_tasks.decoded_cache import decoded_cache
from anon_tasks.detections import Face, faces_above
from anon_tasks.detector import detection_floor
from anon_tasks.devices import available_devices, device_lease
from anon_tasks.errors import ImageError
from anon_tasks.manifest import STAGING_DIR, unchanged_row
from anon_tasks.model import load_model_file
from anon_tasks.pipeline import FetchedImage, detect_images
from anon_tasks.planning import is_up_to_date
from anon_tasks.records import (
    ImageDetections,
    ImageRef,
    ImageStatus,
    ManifestFace,
    ManifestRow,
    ShardDetections,
)
from anon_tasks.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
)
from anon_tasks.storage import (
    file_fingerprint,
    is_local,
    join_url,
    read_bytes,
    write_bytes_atomic,
)

__all__ = [
    "MaskedImage",
    "MaskedShard",
    "detect_faces",
    "list_images",
    "mask_faces",
    "storage_options_for",
    "write_images",
]

_DEFAULT_DETECTION = DetectionSettings()
_DEFAULT_MASKING = MaskSettings()
_DEFAULT_OUTPUT = OutputSettings()


@dataclass(frozen=True)
class MaskedImage:
    """One image after masking: its encoded bytes (or why there are none) and its sidecars.

    Held in memory between ``mask_faces`` and ``write_images`` only; never persisted.
    """

    image: ImageRef
    status: ImageStatus
    faces: tuple[Face, ...] = ()
    content: bytes | None = None
    sidecars: tuple[tuple[str, bytes], ...] = ()
    render_key: str | None = None
    error: str | None = None
    previous: ManifestRow | None = None

    def __repr__(self) -> str:
        size = len(self.content) if self.content is not None else 0
        return f"MaskedImage({self.image.relative_path!r}, {self.status.value}, {size} bytes)"


@dataclass(frozen=True)
class MaskedShard:
    """A shard's masked images, and how many source images masking had to read again."""

    images: tuple[MaskedImage, ...]
    images_read: int = 0


# Anonymizers are cheap (the ONNX session is shared) but not free; reuse one per settings.
_anonymizers: dict[tuple[DetectionSettings, MaskSettings, OutputSettings], Anonymizer] = {}
_anonymizers_lock = threading.Lock()


def _anonymizer(
    detection: DetectionSettings, masking: MaskSettings, output: OutputSettings
) -> Anonymizer:
    key = (detection, masking, output)
    with _anonymizers_lock:
        if key not in _anonymizers:
            _anonymizers[key] = Anonymizer(detection=detection, masking=masking, output=output)
        return _anonymizers[key]


def _block_storage_options(slug: str) -> dict[str, Any]:
    """fsspec options from a Prefect credentials block (prefect-aws ``AwsCredentials`` style)."""
    with _blocks_lock:
        if slug in _block_options:
            return _block_options[slug]
    from prefect.blocks.core import Block

    block = Block.load(slug)
    options: dict[str, Any] = {}

    def secret(name: str) -> str | None:
        value = getattr(block, name, None)
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    if getattr(block, "aws_access_key_id", None):
        options["key"] = block.aws_access_key_id  # type: ignore[attr-defined]
    if secret("aws_secret_access_key"):
        options["secret"] = secret("aws_secret_access_key")
    if secret("aws_session_token"):
        options["token"] = secret("aws_session_token")
    if getattr(block, "profile_name", None):
        options["profile"] = block.profile_name  # type: ignore[attr-defined]
    client_kwargs = {}
    if getattr(block, "region_name", None):
        client_kwargs["region_name"] = block.region_name  # type: ignore[attr-defined]
    parameters = getattr(block, "aws_client_parameters", None)
    if parameters is not None and getattr(parameters, "endpoint_url", None):
        options["endpoint_url"] = parameters.endpoint_url
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    with _blocks_lock:
        _block_options[slug] = options
    return options


_block_options: dict[str, dict[str, Any]] = {}
_blocks_lock = threading.Lock()


def storage_options_for(
    storage_options: Mapping[str, Any] | None, credentials_block: str | None
) -> dict[str, Any]:
    """The fsspec options for a run: its plain options plus those of its credentials block.

    The block is loaded once per process; the result holds secrets and is never logged,
    persisted or put in a cache key.
    """
    options = dict(storage_options or {})
    if credentials_block:
        options.update(_block_storage_options(credentials_block))
    return options


@task(name="list-images", cache_policy=NO_CACHE, persist_result=False, retries=2)
def list_images(
    source: str,
    storage_options: dict[str, Any] | None = None,
    credentials_block: str | None = None,
) -> list[ImageRef]:
    """List the images under ``source`` with content fingerprints and caption sidecars.

    Args:
        source: A local folder or fsspec URL.
        storage_options: fsspec options (no secrets), e.g. ``{"endpoint_url": ...}``.
        credentials_block: A Prefect credentials block for the storage, e.g.
            ``"aws-credentials/datasets"``.

    Returns:
        Image references sorted by relative path.

    Example:
        >>> images = list_images("s3://bucket/raw")
    """
    options = storage_options_for(storage_options, credentials_block)
    images = sorted(list_dataset(source, options), key=lambda image: image.relative_path)
    get_run_logger().info("%d image(s) under %s", len(images), source)
    return images


def _shard_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    detection: DetectionSettings = parameters.get("detection") or _DEFAULT_DETECTION
    return shard_detection_key(
        parameters["images"],
        source=parameters["source"],
        model_sha256=load_model_file(detection.model_path).sha256,
        score_floor=detection_floor(detection.threshold),
        max_pixels=parameters.get("max_pixels") or _DEFAULT_OUTPUT.max_pixels,
        quality=detection.quality.value,
    )


def _image_detections(
    item: FetchedImage, outcome: tuple[Face, ...] | Exception, floor: float
) -> ImageDetections:
    """The record of one image: its faces down to ``floor``, or its error (logged)."""
    image = item.image
    if isinstance(outcome, FileNotFoundError):  # removed since it was listed
        get_run_logger().warning("%s vanished before it could be read", image.relative_path)
        return ImageDetections(image=image, score_floor=floor, error=_vanished(image))
    if isinstance(outcome, Exception):
        reason = outcome.reason if isinstance(outcome, ImageError) else str(outcome)
        get_run_logger().warning("cannot read %s: %s", image.relative_path, reason)
        return ImageDetections(image=image, score_floor=floor, error=str(outcome))
    frames = len(item.decoded.frames) if item.decoded is not None else 0
    return ImageDetections(image=image, faces=outcome, score_floor=floor, frame_count=frames)


def _stored_detections(context: TaskRunContext | None, key: str) -> ImageDetections | None:
    store = context.result_store if context else None
    if store is None or not store.exists(key):
        return None
    try:
        value = store.read(key).result
    except Exception:  # an unreadable record is recomputed, never trusted
        return None
    return value if isinstance(value, ImageDetections) else None


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
    max_pixels: int = _DEFAULT_OUTPUT.max_pixels,
    device_hint: int = 0,
    storage_options: dict[str, Any] | None = None,
    credentials_block: str | None = None,
) -> ShardDetections:
    """Find every face candidate above the score floor in a shard of images.

    Candidates down to ``SCORE_FLOOR`` (or the threshold, when it is lower) are kept so that
    any threshold at or above it can be applied later without running the model again. Images
    that cannot be decoded are returned with their error; the shard goes on.

    Args:
        images: The shard's image references (from ``list_images``).
        source: The dataset root the references are relative to.
        detection: Detector settings (model, device); the threshold is applied later.
        max_pixels: Images above this many pixels are refused before decoding.
        device_hint: Which of the available devices to try first (the flow spreads shards
            round-robin); a free device is leased exclusively for the shard's inference.
        storage_options: fsspec options for the source (no secrets).
        credentials_block: A Prefect credentials block for the source.

    Returns:
        Detections per image, and how many images were read and inferred in this run.
    """
    logger = get_run_logger()
    context = TaskRunContext.get()
    store = context.result_store if context is not None else None
    options = storage_options_for(storage_options, credentials_block)
    model_sha = load_model_file(detection.model_path).sha256
    floor = detection_floor(detection.threshold)
    keys = [
        detection_key(
            image,
            source=source,
            model_sha256=model_sha,
            score_floor=floor,
            max_pixels=max_pixels,
            quality=detection.quality.value,
        )
        for image in images
    ]
    found: dict[str, ImageDetections] = {}
    for image, key in zip(images, keys, strict=True):
        stored = _stored_detections(context, key)
        if stored is not None:
            found[image.relative_path] = stored
    missing = [
        (image, key)
        for image, key in zip(images, keys, strict=True)
        if image.relative_path not in found
    ]
    device = None
    read = inferred = 0
    if missing:
        devices = available_devices(detection.device)
        start = device_hint % len(devices)
        with device_lease(devices[start:] + devices[:start]) as device:
            anonymizer = _anonymizer(
                detection.model_copy(update={"device": device}),
                _DEFAULT_MASKING,
                OutputSettings(max_pixels=max_pixels),
            )
            keys_by_path = {image.relative_path: key for image, key in missing}
            stream = detect_images(
                anonymizer, source, [image for image, _ in missing], options, score_floor=floor
            )
            for item, outcome in stream:
                read += int(item.was_read)
                result = _image_detections(item, outcome, floor)
                if result.error is None and item.decoded is not None:
                    inferred += 1
                    decoded_cache.put(item.url, item.image.fingerprint, item.decoded)
                if store is not None:
                    store.write(obj=result, key=keys_by_path[item.image.relative_path])
                found[item.image.relative_path] = result
    logger.info(
        "%d image(s): %d read, %d inferred%s",
        len(images),
        read,
        inferred,
        f" on {device}" if device else "",
    )
    results = [found[image.relative_path] for image in images]
    return ShardDetections(
        images=tuple(results), images_read=read, images_inferred=inferred, device=device
    )


def _vanished(image: ImageRef) -> str:
    return f"{image.relative_path}: removed from the source during the run"


def _sidecars(
    source: str,
    image: ImageRef,
    faces: tuple[Face, ...],
    note: str | None,
    masked: bool,
    options: Mapping[str, Any],
) -> tuple[tuple[str, bytes], ...]:
    copies = []
    for sidecar in image.sidecars:
        content = read_bytes(join_url(source, sidecar.relative_path), options)
        if note and masked and faces:
            content = add_caption_note(sidecar.relative_path, content, note)
        copies.append((sidecar.relative_path, content))
    return tuple(copies)


@task(name="mask-faces", cache_policy=NO_CACHE, persist_result=False, retries=2)
def mask_faces(
    detections: ShardDetections,
    source: str,
    dest: str,
    detection: DetectionSettings = _DEFAULT_DETECTION,
    masking: MaskSettings = _DEFAULT_MASKING,
    output: OutputSettings = _DEFAULT_OUTPUT,
    caption_note: str | None = None,
    previous: dict[str, ManifestRow] | None = None,
    storage_options: dict[str, Any] | None = None,
    credentials_block: str | None = None,
) -> MaskedShard:
    """Mask the faces above the threshold in each image of a shard and encode the result.

    An image whose output in ``dest`` is still the one the previous manifest recorded for the
    same render key is not read again (status ``unchanged``). Fail closed: an image that fails
    at any step has no bytes and status ``failed``.

    Args:
        detections: The shard's detections (from ``detect_faces``).
        source: The dataset root.
        dest: The output root (to recognise outputs that are already up to date).
        detection: Its ``threshold`` selects the faces to mask.
        masking: Method, mask scale, ellipse and mosaic size.
        output: Encoding settings (JPEG quality, metadata, pixel limit).
        caption_note: Note added to caption sidecars of images with masked faces.
        previous: The previous manifest's rows for this shard's images, by source path.
        storage_options: fsspec options for source and dest (no secrets).
        credentials_block: A Prefect credentials block for source and dest.

    Returns:
        One ``MaskedImage`` per image, in shard order, and the number of images read (an image
        decoded moments before by ``detect_faces`` in this process is not read again).
    """
    logger = get_run_logger()
    anonymizer = _anonymizer(detection, masking, output)
    model_sha = anonymizer.detector.model_sha256
    previous = previous or {}
    options = storage_options_for(storage_options, credentials_block)

    def mask_one(found: ImageDetections) -> tuple[MaskedImage, bool]:
        """One image masked and encoded (or skipped, or failed), and whether it was read."""
        image = found.image
        faces = faces_above(found.faces, detection.threshold)
        key = render_key(
            image,
            model_sha256=model_sha,
            threshold=detection.threshold,
            masking=masking,
            output=output,
            caption_note=caption_note,
        )
        if found.error is not None:
            return MaskedImage(image=image, status=ImageStatus.FAILED, error=found.error), False
        prior = previous.get(image.relative_path)
        if is_up_to_date(
            image, prior, key, lambda relative: file_fingerprint(join_url(dest, relative), options)
        ):
            unchanged = MaskedImage(
                image=image,
                status=ImageStatus.UNCHANGED,
                faces=faces,
                render_key=key,
                previous=prior,
            )
            return unchanged, False
        was_read = False
        try:
            url = join_url(source, image.relative_path)
            decoded = decoded_cache.pop(url, image.fingerprint)
            if decoded is None:
                decoded = anonymizer.decode(read_bytes(url, options), source=image.relative_path)
                was_read = True
            encoded = anonymizer.encode(anonymizer.mask(decoded, faces), source=image.relative_path)
            hides = masking.method is not AnonymizeMethod.NONE
            sidecars = _sidecars(source, image, faces, caption_note, hides, options)
        except ImageError as exc:
            logger.warning("cannot anonymise %s: %s", image.relative_path, exc.reason)
            failed = MaskedImage(image=image, status=ImageStatus.FAILED, error=str(exc))
            return failed, was_read
        except FileNotFoundError:
            failed = MaskedImage(image=image, status=ImageStatus.FAILED, error=_vanished(image))
            return failed, was_read
        written = MaskedImage(
            image=image,
            status=ImageStatus.WRITTEN,
            faces=faces,
            content=encoded,
            sidecars=sidecars,
            render_key=key,
        )
        return written, was_read

    # Masking and encoding release the GIL (OpenCV, Pillow): a few images at a time.
    threads = pipeline_threads()
    results = list(ordered_map(mask_one, detections.images, threads=threads, ahead=2 * threads))
    return MaskedShard(
        images=tuple(masked for masked, _ in results),
        images_read=sum(was_read for _, was_read in results),
    )


def _manifest_faces(faces: tuple[Face, ...]) -> tuple[ManifestFace, ...]:
    return tuple(
        ManifestFace(
            box=tuple(round(v, 2) for v in face.xyxy),
            score=round(face.score, 4),  # type: ignore[arg-type]
            frame=face.frame,
            landmarks=tuple((round(x, 1), round(y, 1)) for x, y in face.landmarks_xy),
        )
        for face in faces
    )


@task(name="write-images", cache_policy=NO_CACHE, persist_result=False, retries=2)
def write_images(
    masked: MaskedShard,
    dest: str,
    detection: DetectionSettings = _DEFAULT_DETECTION,
    masking: MaskSettings = _DEFAULT_MASKING,
    storage_options: dict[str, Any] | None = None,
    credentials_block: str | None = None,
) -> list[ManifestRow]:
    """Write anonymised images and their sidecars to ``dest`` atomically; return manifest rows.

    Each file appears whole or not at all (temporary name then rename; one PUT on object
    stores). Images that failed get a row with the error and no output.

    Args:
        masked: The shard's masked images (from ``mask_faces``).
        dest: The output root; relative paths are kept.
        detection: Recorded in the manifest (threshold, model).
        masking: Recorded in the manifest (method and its parameters).
        storage_options: fsspec options for dest (no secrets).
        credentials_block: A Prefect credentials block for dest.

    Returns:
        One manifest row per image, in shard order.
    """
    model_sha = load_model_file(detection.model_path).sha256
    options = storage_options_for(storage_options, credentials_block)
    staging = join_url(dest, STAGING_DIR) if is_local(dest) else None
    parameters = {
        "threshold": detection.threshold,
        "quality": detection.quality.value,
        **masking.model_dump(mode="json"),
        "model_path": detection.model_path,
    }
    rows: list[ManifestRow] = []
    for item in masked.images:
        common = {
            "source": item.image.relative_path,
            "source_fingerprint": item.image.fingerprint,
            "parameters": parameters,
            "model_sha256": model_sha,
            "package_version": __version__,
            "render_key": item.render_key,
        }
        if item.status is ImageStatus.FAILED:
            rows.append(
                ManifestRow(output=None, status=ImageStatus.FAILED, error=item.error, **common)
            )
            continue
        output = item.image.relative_path
        if item.status is ImageStatus.UNCHANGED and item.previous is not None:
            rows.append(unchanged_row(item.previous))
            continue
        if item.content is None:  # fail closed: nothing to write is never "written"
            raise ValueError(f"{output}: no anonymised bytes for an image marked written")
        url = join_url(dest, output)
        for relative, content in item.sidecars:  # captions first: an image is never without
            write_bytes_atomic(join_url(dest, relative), content, options, staging_dir=staging)
        write_bytes_atomic(url, item.content, options, staging_dir=staging)
        rows.append(
            ManifestRow(
                output=output,
                status=item.status,
                faces=_manifest_faces(item.faces),
                output_fingerprint=file_fingerprint(url, options),
                **common,
            )
        )
    return rows
