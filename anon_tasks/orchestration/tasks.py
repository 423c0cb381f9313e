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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from anon_tasks.core.concurrency import ordered_map, pipeline_threads
from anon_tasks.core.errors import ConfigurationError, ImageError, SidecarRefusedError
from anon_tasks.core.faces import Face, faces_above
from anon_tasks.core.records import (
    ImageDetections,
    ImageRef,
    ImageStatus,
    ManifestFace,
    ManifestRow,
    ShardDetections,
    SkippedEntry,
)
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    RunSettings,
)
from anon_tasks.core.version import __version__
from anon_tasks.datasets.captions import SIDECAR_MAX_BYTES, sanitize_sidecar
from anon_tasks.datasets.keys import detection_key, render_key, shard_detection_key
from anon_tasks.datasets.listing import scan_dataset
from anon_tasks.datasets.manifest import (
    MANIFEST_DIR,
    STAGING_DIR,
    manifest_parameters,
    unchanged_row,
)
from anon_tasks.datasets.outputs import remove_files, remove_orphans
from anon_tasks.datasets.planning import is_up_to_date
from anon_tasks.detection.detector import detection_floor
from anon_tasks.detection.devices import available_devices, device_lease
from anon_tasks.detection.model import load_model_file
from anon_tasks.imaging.codec import DecodedImage, decode_image, encode_image
from anon_tasks.pipeline.anonymizer import Anonymizer, mask_image
from anon_tasks.pipeline.decoded_cache import decoded_cache
from anon_tasks.pipeline.stages import FetchedImage, content_digest, detect_images
from anon_tasks.storage.files import (
    file_fingerprint,
    is_local,
    join_url,
    read_bytes,
    write_bytes_atomic,
)

__all__ = [
    "MaskedImage",
    "MaskedShard",
    "SourceListing",
    "detect_faces",
    "list_images",
    "mask_faces",
    "remove_stale_outputs",
    "scan_source",
    "storage_options_for",
    "write_images",
]

_DEFAULT_DETECTION = DetectionSettings()
_DEFAULT_MASKING = MaskSettings()
_DEFAULT_OUTPUT = OutputSettings()
_DEFAULT_RUN = RunSettings()


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
    refused_sidecars: tuple[str, ...] = ()
    render_key: str | None = None
    error: str | None = None
    previous: ManifestRow | None = None
    content_sha256: str | None = None

    def __repr__(self) -> str:
        size = len(self.content) if self.content is not None else 0
        return f"MaskedImage({self.image.relative_path!r}, {self.status.value}, {size} bytes)"


@dataclass(frozen=True)
class MaskedShard:
    """A shard's masked images, and how many source images masking had to read again."""

    images: tuple[MaskedImage, ...]
    images_read: int = 0
    images_redetected: int = 0


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


def _detector_on(device: str, detection: DetectionSettings, output: OutputSettings) -> Anonymizer:
    """The shared anonymizer that detects on a leased ``device`` (masking settings unused)."""
    return _anonymizer(
        detection.model_copy(update={"device": device}),
        _DEFAULT_MASKING,
        OutputSettings(max_pixels=output.max_pixels),
    )


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


class SourceListing(BaseModel):
    """What a listing of the source found: images to process, and entries it will not."""

    model_config = ConfigDict(frozen=True)

    images: tuple[ImageRef, ...]
    skipped: tuple[SkippedEntry, ...] = ()


def _scan(source: str, options: Mapping[str, Any]) -> tuple[list[ImageRef], list[SkippedEntry]]:
    """Images (sorted by path) and skipped entries of ``source``.

    Images inside a source folder named like dest's bookkeeping folder are skipped: their
    outputs would land among the manifest and be taken for the tool's own files.
    """
    images: list[ImageRef] = []
    skipped: list[SkippedEntry] = []
    for entry in scan_dataset(source, options):
        if isinstance(entry, ImageRef) and entry.relative_path.startswith(MANIFEST_DIR + "/"):
            entry = SkippedEntry(
                relative_path=entry.relative_path,
                reason=f"inside a source folder named {MANIFEST_DIR}, which dest reserves for "
                "the manifest",
                fingerprint=entry.fingerprint,
            )
        (images if isinstance(entry, ImageRef) else skipped).append(entry)
    return sorted(images, key=lambda image: image.relative_path), skipped


@task(name="scan-source", cache_policy=NO_CACHE, persist_result=False, retries=2)
def scan_source(source: str, run: RunSettings = _DEFAULT_RUN) -> SourceListing:
    """List every entry of ``source``: images with fingerprints and sidecars, and what is skipped.

    Args:
        source: A local folder or fsspec URL.
        run: Its storage options and credentials block are used to reach the source.

    Returns:
        Images sorted by relative path, and the entries that will not be processed (not an
        image, not a regular file, a hidden file, a name that is not UTF-8), each with a reason.

    Example:
        >>> listing = scan_source("s3://bucket/raw")
    """
    images, skipped = _scan(source, storage_options_for(run.storage_options, run.credentials_block))
    logger = get_run_logger()
    logger.info("%d image(s) under %s, %d other entries skipped", len(images), source, len(skipped))
    for entry in skipped[:20]:
        logger.info("skipping %s: %s", entry.relative_path, entry.reason)
    return SourceListing(images=tuple(images), skipped=tuple(skipped))


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
        Image references sorted by relative path (``scan_source`` also says what is skipped).

    Example:
        >>> images = list_images("s3://bucket/raw")
    """
    images, _ = _scan(source, storage_options_for(storage_options, credentials_block))
    get_run_logger().info("%d image(s) under %s", len(images), source)
    return images


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
        return ImageDetections(
            image=image, score_floor=floor, error=str(outcome), content_sha256=item.content_sha256
        )
    frames = len(item.decoded.frames) if item.decoded is not None else 0
    return ImageDetections(
        image=image,
        faces=outcome,
        score_floor=floor,
        frame_count=frames,
        content_sha256=item.content_sha256,
    )


def _stored_detections(context: TaskRunContext | None, key: str) -> ImageDetections | None:
    store = context.result_store if context else None
    if store is None or not store.exists(key):
        return None
    try:
        value = store.read(key).result
    except Exception:  # an unreadable record is recomputed, never trusted
        return None
    if not isinstance(value, ImageDetections):
        return None
    if value.error is None and value.content_sha256 is None:
        return None  # not bound to the bytes it was computed on: recompute
    return value


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
    run: RunSettings = _DEFAULT_RUN,
) -> ShardDetections:
    """Find every face candidate above the score floor in a shard of images.

    Candidates down to ``SCORE_FLOOR`` (or the threshold, when it is lower) are kept so that
    any threshold at or above it can be applied later without running the model again. Each
    image's record carries the SHA-256 of the bytes its faces were found in. Images that
    cannot be decoded are returned with their error; the shard goes on.

    Args:
        images: The shard's image references (from ``scan_source`` or ``list_images``).
        source: The dataset root the references are relative to.
        detection: Detector settings (model, quality, device); the threshold is applied later.
        output: Its ``max_pixels``: images above it are refused before decoding.
        device_hint: Which of the available devices to try first (the flow spreads shards
            round-robin); a free device is leased exclusively for the shard's inference.
        run: Storage options and credentials block for the source.

    Returns:
        Detections per image, and how many images were read and inferred in this run.
    """
    logger = get_run_logger()
    context = TaskRunContext.get()
    store = context.result_store if context is not None else None
    options = storage_options_for(run.storage_options, run.credentials_block)
    model_sha = load_model_file(detection.model_path).sha256
    floor = detection_floor(detection.threshold)
    keys = [
        detection_key(
            image, source=source, model_sha256=model_sha, detection=detection, output=output
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
            anonymizer = _detector_on(device, detection, output)
            keys_by_path = {image.relative_path: key for image, key in missing}
            stream = detect_images(
                anonymizer, source, [image for image, _ in missing], options, score_floor=floor
            )
            for item, outcome in stream:
                read += int(item.was_read)
                result = _image_detections(item, outcome, floor)
                if result.error is None and item.decoded is not None:
                    inferred += 1
                    if item.content_sha256 is not None:
                        decoded_cache.put(item.url, item.content_sha256, item.decoded)
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
    # Records (and whole cached shards) hold the references of the run that made them: bind
    # each to this run's reference, so its caption sidecars are today's, never a cached list.
    results = [found[image.relative_path].model_copy(update={"image": image}) for image in images]
    return ShardDetections(
        images=tuple(results), images_read=read, images_inferred=inferred, device=device
    )


def _vanished(image: ImageRef) -> str:
    return f"{image.relative_path}: removed from the source during the run"


def _sidecars(
    source: str,
    image: ImageRef,
    note: str | None,
    options: Mapping[str, Any],
) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """The sidecars to write beside an image (sanitised, with the note), and those refused."""
    copies: list[tuple[str, bytes]] = []
    refused: list[str] = []
    for sidecar in image.sidecars:
        try:
            content = read_bytes(
                join_url(source, sidecar.relative_path), options, max_bytes=SIDECAR_MAX_BYTES
            )
            copies.append(
                (sidecar.relative_path, sanitize_sidecar(sidecar.relative_path, content, note))
            )
        except SidecarRefusedError as exc:
            refused.append(f"{sidecar.relative_path}: {exc.reason}")
        except ImageError as exc:
            refused.append(f"{sidecar.relative_path}: {exc.reason}")
        except FileNotFoundError:
            refused.append(f"{sidecar.relative_path}: removed from the source during the run")
    return tuple(copies), tuple(refused)


def _redetect(
    decoded: DecodedImage, detection: DetectionSettings, output: OutputSettings
) -> tuple[Face, ...]:
    """Faces of pixels whose bytes changed since detection, found again under a device lease.

    The only place masking runs the model; a session is created only when this happens.
    """
    with device_lease(available_devices(detection.device)) as device:
        anonymizer = _detector_on(device, detection, output)
        return anonymizer.detect(decoded, score_floor=detection_floor(detection.threshold))


@task(name="mask-faces", cache_policy=NO_CACHE, persist_result=False, retries=2)
def mask_faces(
    detections: ShardDetections,
    source: str,
    dest: str,
    detection: DetectionSettings = _DEFAULT_DETECTION,
    masking: MaskSettings = _DEFAULT_MASKING,
    output: OutputSettings = _DEFAULT_OUTPUT,
    run: RunSettings = _DEFAULT_RUN,
    previous: dict[str, ManifestRow] | None = None,
) -> MaskedShard:
    """Mask the faces above the threshold in each image of a shard and encode the result.

    The pixels masked are always those the faces were found in: they come from the bytes whose
    SHA-256 the detections record. When the file was replaced since (a read gives other
    bytes), its faces are detected again before masking, never taken from the old file.

    An image whose output in ``dest`` is still the one the previous manifest recorded for the
    same render key is not read again (status ``unchanged``). Fail closed: an image that fails
    at any step has no bytes and status ``failed``.

    Args:
        detections: The shard's detections (from ``detect_faces``).
        source: The dataset root.
        dest: The output root (to recognise outputs that are already up to date).
        detection: Its ``threshold`` selects the faces to mask.
        masking: Method (not ``none``: that detects only), mask scale, ellipse, mosaic size.
        output: Encoder settings (JPEG quality, metadata, pixel limit).
        run: Caption note, storage options and credentials block.
        previous: The previous manifest's rows for this shard's images, by source path.

    Returns:
        One ``MaskedImage`` per image, in shard order, and the number of images read (an image
        decoded moments before by ``detect_faces`` in this process is not read again).

    Raises:
        ConfigurationError: ``masking.method`` is ``none`` (there is nothing to mask or write).
    """
    if masking.method is AnonymizeMethod.NONE:
        raise ConfigurationError(
            "masking.method=none detects only: nothing is masked or written", field="method"
        )
    logger = get_run_logger()
    model_sha = load_model_file(detection.model_path).sha256
    previous = previous or {}
    options = storage_options_for(run.storage_options, run.credentials_block)

    def mask_one(found: ImageDetections) -> tuple[MaskedImage, bool, bool]:
        """One image masked and encoded (or skipped, or failed); whether it was read and
        whether its faces had to be found again."""
        image = found.image
        prior = previous.get(image.relative_path)
        key = render_key(
            image,
            model_sha256=model_sha,
            detection=detection,
            masking=masking,
            output=output,
            run=run,
        )
        if found.error is not None:
            failed = MaskedImage(
                image=image, status=ImageStatus.FAILED, error=found.error, previous=prior
            )
            return failed, False, False
        if is_up_to_date(
            image, prior, key, lambda relative: file_fingerprint(join_url(dest, relative), options)
        ):
            faces = faces_above(found.faces, detection.threshold)
            unchanged = MaskedImage(
                image=image,
                status=ImageStatus.UNCHANGED,
                faces=faces,
                render_key=key,
                previous=prior,
                content_sha256=found.content_sha256,
            )
            return unchanged, False, False
        was_read = redetected = False
        candidates = found.faces
        digest = found.content_sha256
        try:
            url = join_url(source, image.relative_path)
            decoded = decoded_cache.pop(url, digest) if digest is not None else None
            if decoded is None:
                content = read_bytes(url, options)
                was_read = True
                decoded = decode_image(
                    content, source=image.relative_path, max_pixels=output.max_pixels
                )
                if content_digest(content) != digest:
                    logger.warning(
                        "%s changed since its faces were found: finding them again",
                        image.relative_path,
                    )
                    candidates = _redetect(decoded, detection, output)
                    digest = content_digest(content)
                    redetected = True
            faces = faces_above(candidates, detection.threshold)
            encoded = encode_image(
                mask_image(decoded, faces, masking), settings=output, source=image.relative_path
            )
            sidecars, refused = _sidecars(
                source, image, run.caption_note if faces else None, options
            )
            for entry in refused:  # the task's logger: this runs on a pool thread
                logger.warning("sidecar not copied: %s", entry)
        except ImageError as exc:
            logger.warning("cannot anonymise %s: %s", image.relative_path, exc.reason)
            failed = MaskedImage(
                image=image, status=ImageStatus.FAILED, error=str(exc), previous=prior
            )
            return failed, was_read, redetected
        except FileNotFoundError:
            failed = MaskedImage(
                image=image, status=ImageStatus.FAILED, error=_vanished(image), previous=prior
            )
            return failed, was_read, redetected
        written = MaskedImage(
            image=image,
            status=ImageStatus.WRITTEN,
            faces=faces,
            content=encoded,
            sidecars=sidecars,
            refused_sidecars=refused,
            render_key=key,
            previous=prior,
            content_sha256=digest,
        )
        return written, was_read, redetected

    # Masking and encoding release the GIL (OpenCV, Pillow): a few images at a time.
    threads = pipeline_threads()
    results = list(ordered_map(mask_one, detections.images, threads=threads, ahead=2 * threads))
    return MaskedShard(
        images=tuple(masked for masked, _, _ in results),
        images_read=sum(was_read for _, was_read, _ in results),
        images_redetected=sum(again for _, _, again in results),
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
    source: str,
    dest: str,
    detection: DetectionSettings = _DEFAULT_DETECTION,
    masking: MaskSettings = _DEFAULT_MASKING,
    run: RunSettings = _DEFAULT_RUN,
) -> list[ManifestRow]:
    """Write anonymised images and their sidecars to ``dest`` atomically; return manifest rows.

    Each file appears whole or not at all (temporary name then rename; one PUT on object
    stores), and never inside ``source``: a target whose real path leads into the source (a
    linked folder in dest, say) is refused. An image that failed gets a row with the error and
    no output; what an earlier run wrote for it is an orphan that ``remove_stale_outputs``
    deletes once every shard is written.

    Args:
        masked: The shard's masked images (from ``mask_faces``).
        source: The dataset root: nothing is ever written inside it.
        dest: The output root; relative paths are kept.
        detection: Recorded in the manifest (threshold, model).
        masking: Recorded in the manifest (method and its parameters).
        run: Storage options and credentials block for dest.

    Returns:
        One manifest row per image, in shard order.
    """
    if masking.method is AnonymizeMethod.NONE:
        raise ConfigurationError(
            "masking.method=none detects only: nothing is masked or written", field="method"
        )
    logger = get_run_logger()
    model_sha = load_model_file(detection.model_path).sha256
    options = storage_options_for(run.storage_options, run.credentials_block)
    staging = join_url(dest, STAGING_DIR) if is_local(dest) else None
    parameters = manifest_parameters(detection, masking)

    def write(relative: str, content: bytes) -> None:
        write_bytes_atomic(
            join_url(dest, relative), content, options, staging_dir=staging, protected_root=source
        )

    def failed_row(item: MaskedImage, error: str | None, common: dict[str, Any]) -> ManifestRow:
        return ManifestRow(output=None, status=ImageStatus.FAILED, error=error, **common)

    rows: list[ManifestRow] = []
    for item in masked.images:
        common = {
            "source": item.image.relative_path,
            "source_fingerprint": item.image.fingerprint,
            "source_sha256": item.content_sha256,
            "parameters": parameters,
            "model_sha256": model_sha,
            "package_version": __version__,
            "render_key": item.render_key,
        }
        if item.status is ImageStatus.FAILED:
            rows.append(failed_row(item, item.error, common))
            continue
        if item.status is ImageStatus.UNCHANGED and item.previous is not None:
            rows.append(unchanged_row(item.previous))
            continue
        if item.content is None:  # fail closed: nothing to write is never "written"
            raise ValueError(f"{item.image.relative_path}: no anonymised bytes to write")
        if item.content_sha256 is None or (
            item.faces
            and len(item.content) == item.image.size_bytes  # cheap first: sizes rarely match
            and content_digest(item.content) == item.content_sha256
        ):
            # Fail closed on a hand-built value too: never bytes unbound to their source, never
            # the source's own bytes when it holds faces.
            raise ValueError(f"{item.image.relative_path}: not masked output bytes; refused")
        output = item.image.relative_path
        written: dict[str, str | None] = {}
        try:
            for relative, content in item.sidecars:  # captions first: an image is never without
                write(relative, content)
                written[relative] = file_fingerprint(join_url(dest, relative), options)
            write(output, item.content)
        except (ImageError, FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, ImageError)
                else f"{output}: a file or folder in dest is in the way ({type(exc).__name__})"
            )
            logger.warning("cannot write %s", reason)
            # No image, so no captions of it either: those just written go again.
            remove_files(dest, written, options, protected_root=source)
            rows.append(failed_row(item, reason, common))
            continue
        rows.append(
            ManifestRow(
                output=output,
                status=item.status,
                faces=_manifest_faces(item.faces),
                output_fingerprint=file_fingerprint(join_url(dest, output), options),
                sidecars={relative: fingerprint or "" for relative, fingerprint in written.items()},
                refused_sidecars=item.refused_sidecars,
                **common,
            )
        )
    return rows


@task(name="remove-stale-outputs", cache_policy=NO_CACHE, persist_result=False, retries=2)
def remove_stale_outputs(
    previous: Sequence[ManifestRow],
    source: str,
    dest: str,
    keep: Collection[str],
    run: RunSettings = _DEFAULT_RUN,
) -> dict[str, tuple[str, ...]]:
    """Delete what earlier runs wrote that this run no longer produces (dest mirrors source).

    Only files that ``previous`` rows record as written, and that are still as written, are
    deleted; never a path in ``keep``, anything outside dest or inside the source.

    Args:
        previous: Rows of the previous manifest whose files may be orphans: images gone from
            the source, images that failed this time, images whose sidecars changed.
        source: The dataset root (protected).
        dest: The output root.
        keep: Relative paths this run produces (its images' outputs and sidecars).
        run: Storage options and credentials block for dest.

    Returns:
        The relative paths deleted, by source image.
    """
    options = storage_options_for(run.storage_options, run.credentials_block)
    removed = remove_orphans(dest, previous, keep, options, protected_root=source)
    for image, paths in removed.items():
        get_run_logger().info("removed %s (written for %s)", ", ".join(paths), image)
    return removed
