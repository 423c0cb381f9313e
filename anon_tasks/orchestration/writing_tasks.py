"""The write tasks: masked images and their sidecars into dest, and orphans out of it.

Each file appears whole or not at all (a temporary name then a rename; one PUT on object
stores), never inside the source, and never unmasked: a value whose bytes are not bound to a
masking is refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anon_tasks.core.errors import ConfigurationError, ImageError
from anon_tasks.core.records import ImageStatus, ManifestRow
from anon_tasks.core.settings import AnonymizeMethod
from anon_tasks.core.urls import is_local
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import STAGING_DIR, unchanged_row
from anon_tasks.datasets.outputs import remove_files, remove_orphans
from anon_tasks.datasets.rows import failed_row, written_row
from anon_tasks.orchestration.masking_task import MaskedImage, MaskedShard
from anon_tasks.pipeline.stages import content_digest
from anon_tasks.storage.fingerprints import file_fingerprint
from anon_tasks.storage.locations import join_url
from anon_tasks.storage.resolved import NO_OPTIONS, ResolvedStorage
from anon_tasks.storage.writes import flush_to_disk, write_bytes_atomic

__all__ = ["remove_stale_outputs", "write_images"]

#: Errors of one target that leave the rest of the shard writable: the image fails.
_IN_THE_WAY = (FileExistsError, IsADirectoryError, NotADirectoryError)


def _check_masked(item: MaskedImage) -> bytes:
    """The bytes to write for ``item``, refusing any that are not masked output.

    Fail closed on a hand-built value too: never bytes unbound to their source, never the
    source's own bytes when it holds faces.
    """
    if item.content is None:  # nothing to write is never "written"
        raise ValueError(f"{item.image.relative_path}: no anonymised bytes to write")
    if item.content_sha256 is None or (
        item.faces
        and len(item.content) == item.image.size_bytes  # cheap first: sizes rarely match
        and content_digest(item.content) == item.content_sha256
    ):
        raise ValueError(f"{item.image.relative_path}: not masked output bytes; refused")
    return item.content


@task(name="write-images", cache_policy=NO_CACHE, persist_result=False, retries=2)
def write_images(
    masked: MaskedShard,
    source: str,
    dest: str,
    render: RenderSpec,
    storage: ResolvedStorage = NO_OPTIONS,
) -> list[ManifestRow]:
    """Write anonymised images and their sidecars to ``dest`` atomically; return manifest rows.

    A target whose real path leads into the source (a linked folder in dest, say) is refused.
    An image that failed gets a row with the error and no output; what an earlier run wrote for
    it is an orphan that ``remove_stale_outputs`` deletes once every shard is written.

    Args:
        masked: The shard's masked images (from ``mask_faces``).
        source: The dataset root: nothing is ever written inside it.
        dest: The output root; relative paths are kept.
        render: The run's render spec, recorded in each row (parameters, model).
        storage: How to reach dest (``resolve_storage(run)``).

    Returns:
        One manifest row per image, in shard order.
    """
    if render.masking.method is AnonymizeMethod.NONE:
        raise ConfigurationError(
            "masking.method=none detects only: nothing is masked or written", field="method"
        )
    logger = get_run_logger()
    staging = join_url(dest, STAGING_DIR) if is_local(dest) else None

    written_urls: list[str] = []

    def write(relative: str, content: bytes) -> str | None:
        """Write one file (flushed to disk with the others, below); its fingerprint in dest."""
        url = join_url(dest, relative)
        write_bytes_atomic(
            url,
            content,
            storage.options,
            staging_dir=staging,
            protected_root=source,
            durable=False,
        )
        written_urls.append(url)
        return file_fingerprint(url, storage.options)

    rows: list[ManifestRow] = []
    for item in masked.images:
        image = item.image
        if item.status is ImageStatus.FAILED:
            rows.append(
                failed_row(
                    image,
                    render,
                    item.error,
                    content_sha256=item.content_sha256,
                    render_key=item.render_key,
                )
            )
            continue
        if item.status is ImageStatus.UNCHANGED and item.previous is not None:
            rows.append(unchanged_row(item.previous, render.detection.threshold))
            continue
        content = _check_masked(item)
        written: dict[str, str | None] = {}
        try:
            for relative, sidecar in item.sidecars:  # captions first: an image is never without
                written[relative] = write(relative, sidecar)
            output_fingerprint = write(image.relative_path, content)
        except (ImageError, *_IN_THE_WAY) as exc:
            reason = (
                str(exc)
                if isinstance(exc, ImageError)
                else f"{image.relative_path}: a file or folder in dest is in the way "
                f"({type(exc).__name__})"
            )
            logger.warning("cannot write %s", reason)
            # No image, so no captions of it either: those just written go again.
            remove_files(dest, written, storage.options, protected_root=source)
            rows.append(
                failed_row(
                    image,
                    render,
                    reason,
                    content_sha256=item.content_sha256,
                    render_key=item.render_key,
                )
            )
            continue
        rows.append(
            written_row(
                image,
                render,
                faces=item.faces,
                near_misses=item.near_misses,
                content_sha256=item.content_sha256,
                render_key=item.render_key or render.key(image),
                score_floor=item.score_floor,
                output_fingerprint=output_fingerprint,
                sidecars=written,
                refused_sidecars=item.refused_sidecars,
            )
        )
    # On disk before any journal or manifest records them: one flush for the whole shard.
    flush_to_disk(written_urls, storage.options)
    return rows


@task(name="remove-stale-outputs", cache_policy=NO_CACHE, persist_result=False, retries=2)
def remove_stale_outputs(
    previous: Sequence[ManifestRow],
    source: str,
    dest: str,
    keep: Collection[str],
    storage: ResolvedStorage = NO_OPTIONS,
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
        storage: How to reach dest (``resolve_storage(run)``).

    Returns:
        The relative paths deleted, by source image.
    """
    removed = remove_orphans(dest, previous, keep, storage.options, protected_root=source)
    for image, paths in removed.items():
        get_run_logger().info("removed %s (written for %s)", ", ".join(paths), image)
    return removed
