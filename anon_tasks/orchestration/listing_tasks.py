"""The listing tasks: what a source holds, as image references and skipped entries.

Each wraps ``datasets.listing.list_source``: one scan of the source, with dest's bookkeeping
folder name reserved.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from anon_tasks.core.records import ImageRef, SkippedEntry
from anon_tasks.datasets.listing import list_source
from anon_tasks.storage.resolved import NO_OPTIONS, ResolvedStorage

__all__ = ["SourceListing", "list_images", "scan_source"]

#: Entries a listing names in the log, at most; the manifest lists every one.
_LOGGED_SKIPS = 20


class SourceListing(BaseModel):
    """What a listing of the source found: images to process, and entries it will not."""

    model_config = ConfigDict(frozen=True)

    images: tuple[ImageRef, ...]
    skipped: tuple[SkippedEntry, ...] = ()


@task(name="scan-source", cache_policy=NO_CACHE, persist_result=False, retries=2)
def scan_source(source: str, storage: ResolvedStorage = NO_OPTIONS) -> SourceListing:
    """List every entry of ``source``: images with fingerprints and sidecars, and what is skipped.

    Args:
        source: A local folder or fsspec URL.
        storage: How to reach it (``resolve_storage(run)``); none needed for local folders.

    Returns:
        Images sorted by relative path, and the entries that will not be processed (not an
        image, not a regular file, a hidden file, a name that is not UTF-8), each with a reason.

    Example:
        >>> listing = scan_source("s3://bucket/raw")
    """
    images, skipped = list_source(source, storage.options)
    logger = get_run_logger()
    logger.info("%d image(s) under %s, %d other entries skipped", len(images), source, len(skipped))
    for entry in skipped[:_LOGGED_SKIPS]:
        logger.info("skipping %s: %s", entry.relative_path, entry.reason)
    return SourceListing(images=tuple(images), skipped=tuple(skipped))


@task(name="list-images", cache_policy=NO_CACHE, persist_result=False, retries=2)
def list_images(source: str, storage: ResolvedStorage = NO_OPTIONS) -> list[ImageRef]:
    """List the images under ``source`` with content fingerprints and caption sidecars.

    Args:
        source: A local folder or fsspec URL.
        storage: How to reach it (``resolve_storage(run)``); none needed for local folders.

    Returns:
        Image references sorted by relative path (``scan_source`` also says what is skipped).

    Example:
        >>> images = list_images("s3://bucket/raw")
    """
    images, _ = list_source(source, storage.options)
    get_run_logger().info("%d image(s) under %s", len(images), source)
    return images
