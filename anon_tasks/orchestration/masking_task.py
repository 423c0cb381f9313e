"""The mask task: the faces above the threshold hidden in each image of a shard, encoded.

The threshold is applied here, once, to the candidates ``detect_faces`` kept. The pixels masked
are always those the faces were found in. The mask task builds no detector of its own: it
borrows the leased one (``pipeline.leases``) only when the candidates cannot serve, that is when
a source's bytes changed since detection, or when detections were kept for a higher threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anon_tasks.core.concurrency import ordered_map, pipeline_threads
from anon_tasks.core.errors import ConfigurationError, ImageError, SidecarRefusedError
from anon_tasks.core.faces import Face, faces_above, near_misses
from anon_tasks.core.records import (
    ImageDetections,
    ImageRef,
    ImageStatus,
    ManifestRow,
    ShardDetections,
)
from anon_tasks.core.settings import AnonymizeMethod
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.planning import is_up_to_date
from anon_tasks.datasets.sidecars import SIDECAR_MAX_BYTES, sanitize_sidecar
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.imaging.encode import encode_image
from anon_tasks.imaging.masking import mask_image
from anon_tasks.pipeline.decoded_cache import DecodedCache
from anon_tasks.pipeline.finding import find_faces
from anon_tasks.pipeline.leases import leased_detector
from anon_tasks.pipeline.stages import content_digest, vanished
from anon_tasks.storage.fingerprints import file_fingerprint
from anon_tasks.storage.locations import join_url
from anon_tasks.storage.reads import read_bytes
from anon_tasks.storage.resolved import NO_OPTIONS, ResolvedStorage

__all__ = ["MaskedImage", "MaskedShard", "mask_faces"]


@dataclass(frozen=True)
class MaskedImage:
    """One image after masking: its encoded bytes (or why there are none) and its sidecars.

    Held in memory between ``mask_faces`` and ``write_images`` only; never persisted.
    """

    image: ImageRef
    status: ImageStatus
    faces: tuple[Face, ...] = ()
    near_misses: tuple[Face, ...] = ()
    content: bytes | None = None
    sidecars: tuple[tuple[str, bytes], ...] = ()
    refused_sidecars: tuple[str, ...] = ()
    render_key: str | None = None
    error: str | None = None
    previous: ManifestRow | None = None
    content_sha256: str | None = None
    #: The score down to which ``faces`` and ``near_misses`` hold every candidate.
    score_floor: float | None = None

    def __repr__(self) -> str:
        size = len(self.content) if self.content is not None else 0
        return f"MaskedImage({self.image.relative_path!r}, {self.status.value}, {size} bytes)"


@dataclass(frozen=True)
class MaskedShard:
    """A shard's masked images, and how many source images masking had to read again."""

    images: tuple[MaskedImage, ...]
    images_read: int = 0
    images_redetected: int = 0


def _sidecars(
    source: str, image: ImageRef, note: str | None, storage: ResolvedStorage
) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """The sidecars to write beside an image (sanitised, with the note), and those refused."""
    copies: list[tuple[str, bytes]] = []
    refused: list[str] = []
    for sidecar in image.sidecars:
        try:
            content = read_bytes(
                join_url(source, sidecar.relative_path),
                storage.options,
                max_bytes=SIDECAR_MAX_BYTES,
            )
            copies.append(
                (sidecar.relative_path, sanitize_sidecar(sidecar.relative_path, content, note))
            )
        except (SidecarRefusedError, ImageError) as exc:
            refused.append(f"{sidecar.relative_path}: {exc.reason}")
        except FileNotFoundError:
            refused.append(f"{sidecar.relative_path}: removed from the source during the run")
    return tuple(copies), tuple(refused)


def _redetect(decoded: DecodedImage, render: RenderSpec) -> tuple[tuple[Face, ...], float]:
    """Candidates in pixels whose bytes changed since detection, found again under a lease,
    and the score they are kept down to.

    The only place masking runs the model; a session is created only when this happens.
    """
    with leased_detector(render.detection) as (_, detector):
        return find_faces(detector, decoded), detector.score_floor


@task(name="mask-faces", cache_policy=NO_CACHE, persist_result=False, retries=2)
def mask_faces(
    detections: ShardDetections,
    source: str,
    dest: str,
    render: RenderSpec,
    storage: ResolvedStorage = NO_OPTIONS,
    previous: Mapping[str, ManifestRow] | None = None,
    decoded: DecodedCache | None = None,
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
        render: The run's render spec: ``detection.threshold`` selects the faces, ``masking``
            (not ``none``: that detects only) hides them, ``output`` encodes, and
            ``render.caption_note`` goes into the sidecars of images with faces.
        storage: How to reach source and dest (``resolve_storage(run)``).
        previous: The previous manifest's rows for this shard's images, by source path.
        decoded: The run's decoded-image cache (pixels ``detect_faces`` decoded moments ago).

    Returns:
        One ``MaskedImage`` per image, in shard order, and the number of images read (an image
        found in ``decoded`` is not read again).

    Raises:
        ConfigurationError: ``render.masking.method`` is ``none`` (nothing to mask or write).
    """
    if render.masking.method is AnonymizeMethod.NONE:
        raise ConfigurationError(
            "masking.method=none detects only: nothing is masked or written", field="method"
        )
    logger = get_run_logger()
    previous = previous or {}
    threshold = render.detection.threshold

    def mask_one(found: ImageDetections) -> tuple[MaskedImage, bool, bool]:
        """One image masked and encoded (or skipped, or failed); whether it was read and
        whether its faces had to be found again."""
        image = found.image
        prior = previous.get(image.relative_path)
        key = render.key(image)
        if found.error is not None:
            failed = MaskedImage(
                image=image, status=ImageStatus.FAILED, error=found.error, previous=prior
            )
            return failed, False, False
        if is_up_to_date(
            image,
            prior,
            key,
            threshold,
            lambda relative: file_fingerprint(join_url(dest, relative), storage.options),
        ):
            unchanged = MaskedImage(
                image=image,
                status=ImageStatus.UNCHANGED,
                faces=faces_above(found.faces, threshold),
                near_misses=near_misses(found.faces, threshold),
                render_key=key,
                previous=prior,
                content_sha256=found.content_sha256,
            )
            return unchanged, False, False
        was_read = redetected = False
        candidates, floor = found.faces, found.score_floor
        digest = found.content_sha256
        try:
            url = join_url(source, image.relative_path)
            pixels = decoded.pop(url, digest) if decoded is not None and digest else None
            if pixels is None:
                content = read_bytes(url, storage.options)
                was_read = True
                pixels = decode_image(
                    content, source=image.relative_path, max_pixels=render.output.max_pixels
                )
                if content_digest(content) != digest:
                    logger.warning(
                        "%s changed since its faces were found: finding them again",
                        image.relative_path,
                    )
                    candidates, floor = _redetect(pixels, render)
                    digest = content_digest(content)
                    redetected = True
            if not redetected and found.score_floor > threshold:
                # Detections kept for a higher threshold miss the faces between: never mask
                # with fewer candidates than this threshold needs.
                logger.warning(
                    "%s: detections kept down to %g serve no threshold of %g: finding them again",
                    image.relative_path,
                    found.score_floor,
                    threshold,
                )
                candidates, floor = _redetect(pixels, render)
                redetected = True
            faces = faces_above(candidates, threshold)
            encoded = encode_image(
                mask_image(pixels, faces, render.masking),
                settings=render.output,
                source=image.relative_path,
            )
            note = render.caption_note if faces else None
            sidecars, refused = _sidecars(source, image, note, storage)
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
                image=image, status=ImageStatus.FAILED, error=vanished(image), previous=prior
            )
            return failed, was_read, redetected
        written = MaskedImage(
            image=image,
            status=ImageStatus.WRITTEN,
            faces=faces,
            near_misses=near_misses(candidates, threshold),
            content=encoded,
            sidecars=sidecars,
            refused_sidecars=refused,
            render_key=key,
            previous=prior,
            content_sha256=digest,
            score_floor=floor,
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
