"""Where ``detect_faces`` stores its records: a Prefect result storage checked against the source.

The flow resolves it once per run and hands it to the task, so no task run loads a block from
the API. A block slug (``s3-bucket/my-cache``) is loaded, once it is known to store outside the
source. A local folder (``<dest>/_anonymize/cache`` by default) is handed as a path, which
Prefect stores through an unsaved ``LocalFileSystem`` under absolute paths: nothing is saved on
the server, and the Blocks page does not gain a block per destination. A remote URL is saved
once as a block named after it, since Prefect finds records of unsaved remote storage nowhere
else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect.filesystems import RemoteFileSystem, WritableFileSystem

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.settings import BLOCK_SLUG, RunSettings
from anon_tasks.core.urls import is_local, local_path, redact_url
from anon_tasks.datasets.manifest import DEFAULT_CACHE_DIR
from anon_tasks.storage.locations import location_within

__all__ = ["check_block_storage", "result_storage_for"]


def _block_location(slug: str) -> str | None:
    """Where a storage block keeps its files, as a path or URL; None when it cannot be told."""
    from prefect.blocks.core import Block

    try:
        block = Block.load(slug)
    except (ValueError, KeyError) as exc:  # Prefect: no such block type or document
        raise ConfigurationError(
            f"result_storage={slug!r} names no saved block ({type(exc).__name__}); for a local "
            f"folder write './{slug}' or an absolute path",
            field="result_storage",
        ) from None
    basepath = getattr(block, "basepath", None)
    if isinstance(basepath, str) and basepath:
        return basepath
    bucket = getattr(block, "bucket_name", None) or getattr(block, "bucket", None)
    if isinstance(bucket, str) and bucket:
        scheme = "gs" if "gcs" in type(block).__name__.lower() else "s3"
        folder = str(getattr(block, "bucket_folder", "") or "").strip("/")
        return f"{scheme}://{bucket}/{folder}".rstrip("/")
    return None


def check_block_storage(slug: str, source: str) -> None:
    """A result storage block must store outside the source, and say where it stores.

    Raises:
        ConfigurationError: On ``result_storage``, naming the overlap or the unknown place.
    """
    location = _block_location(slug)
    if location is None:
        raise ConfigurationError(
            f"result_storage={slug!r}: cannot tell where this block stores files, so it cannot "
            "be checked to lie outside the source; give a path or URL instead",
            field="result_storage",
        )
    if location_within(location, source) or location_within(source, location):
        raise ConfigurationError(
            f"result_storage={slug!r} stores in {redact_url(location)!r}, which overlaps "
            f"source={redact_url(source)!r}: the source is never written",
            field="result_storage",
        )


def result_storage_for(dest: str, run: RunSettings) -> WritableFileSystem | Path | None:
    """The result storage for cached detections, resolved once for a run.

    ``run.result_storage`` when it is a block slug (loaded); a ``Path`` for a local folder
    (Prefect stores there through an unsaved ``LocalFileSystem``), or for
    ``<dest>/_anonymize/cache`` when dest is local; a block saved for a remote URL; None
    (Prefect's default) when neither is given and dest is remote.
    """
    from prefect.blocks.core import Block

    location = run.result_storage
    if location is not None and BLOCK_SLUG.match(location):
        block = Block.load(location)
        if not isinstance(block, WritableFileSystem):
            raise ConfigurationError(
                f"result_storage={location!r} is a {type(block).__name__}, which cannot store "
                "files",
                field="result_storage",
            )
        return block
    if location is None:
        if not is_local(dest):
            return None  # Prefect's default result storage
        location = str(local_path(dest).resolve() / DEFAULT_CACHE_DIR)
    if is_local(location):
        folder = Path(local_path(location)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    name = "anon-tasks-cache-" + hashlib.sha256(location.encode()).hexdigest()[:16]
    # Plain options only (an endpoint, a profile): secrets stay with the credential chain.
    remote = RemoteFileSystem(basepath=location, settings=dict(run.storage_options))
    remote.save(name, overwrite=True)
    return remote
