"""Listing an object-store prefix: every object under it by key, page by page.

On S3 the keys come from ``list_objects_v2`` through the aiobotocore client s3fs holds, one page
at a time on s3fs's event loop, each page retried on its own as s3fs retries its requests, so a
prefix of millions of keys is walked with one page (1,000 keys) in memory; other fsspec
filesystems are listed with ``find``. A key whose folder or name would not be processed (hidden,
a control character, a backslash, an empty or ``..`` segment) becomes a skipped entry, a bad
folder said once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any, Final

from anon_tasks.core.formats import SNIFF_BYTES
from anon_tasks.core.records import SkippedEntry
from anon_tasks.datasets.entries import Leaf, ListedFile, display_name, name_problem
from anon_tasks.storage.fingerprints import object_fingerprint
from anon_tasks.storage.heads import read_object_head
from anon_tasks.storage.locations import StorageOptions, url_to_fs

__all__ = ["remote_leaves"]

logger = logging.getLogger(__name__)

#: Keys asked for in one ``list_objects_v2`` request (S3's own maximum).
S3_PAGE_SIZE: Final = 1000
#: S3 error codes a listing page is asked for again (throttling, S3's own transient faults).
_RETRIED_S3_CODES: Final = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)


async def _s3_client(fs: Any, bucket: str, prefix: str) -> tuple[Any, dict[str, Any]]:
    """The aiobotocore client s3fs made from the storage options (endpoint, credentials,
    timeouts) and the ``list_objects_v2`` arguments for ``prefix``.

    ``s3_additional_kwargs`` and requester-pays apply where ``ListObjectsV2`` takes them, as
    they do on s3fs's own requests.
    """
    await fs.set_session()
    client = await fs.get_s3(bucket)  # the bucket's region client when ``cache_regions`` is on
    members = client.meta.service_model.operation_model("ListObjectsV2").input_shape.members
    extra = {**getattr(fs, "s3_additional_kwargs", {}), **getattr(fs, "req_kw", {})}
    kwargs = {key: value for key, value in extra.items() if key in members and value is not None}
    return client, {**kwargs, "Bucket": bucket, "Prefix": prefix, "MaxKeys": S3_PAGE_SIZE}


async def _list_page(client: Any, kwargs: dict[str, Any], attempts: int) -> dict[str, Any]:
    """One ``list_objects_v2`` page, retried as s3fs retries its own requests.

    Transient failures (timeouts, cut connections, unparsable replies, S3's ``SlowDown`` and
    5xx codes) are tried again up to ``attempts`` times with s3fs's backoff; S3's other errors
    come back as s3fs raises them (a missing bucket is ``FileNotFoundError``).
    """
    from botocore.exceptions import ClientError
    from s3fs.core import S3_RETRYABLE_ERRORS
    from s3fs.errors import translate_boto_error

    error: BaseException | None = None
    for attempt in range(max(1, attempts)):
        try:
            return await client.list_objects_v2(**kwargs)
        except S3_RETRYABLE_ERRORS as exc:
            error = exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _RETRIED_S3_CODES:
                raise translate_boto_error(exc) from exc
            error = translate_boto_error(exc)
        logger.debug("listing page failed (%s); trying again", type(error).__name__)
        await asyncio.sleep(min(1.7**attempt * 0.1, 15.0))
    assert error is not None
    raise error


def _s3_pages(fs: Any, root_path: str) -> Iterator[list[dict[str, Any]]]:
    """One ``list_objects_v2`` page (up to 1,000 objects) at a time, in key order.

    Each page is asked for with the continuation token of the one before, so a page that fails
    is retried on its own; the listing never starts over.
    """
    from fsspec.asyn import sync

    bucket, _, prefix = root_path.partition("/")
    prefix = prefix + "/" if prefix else ""
    client, kwargs = sync(fs.loop, _s3_client, fs, bucket, prefix)
    attempts = int(getattr(fs, "retries", 5) or 5)
    token: str | None = None
    while True:
        request = {**kwargs, "ContinuationToken": token} if token else kwargs
        page = sync(fs.loop, _list_page, client, request, attempts)
        yield [
            {"name": f"{bucket}/{item['Key']}", "size": item.get("Size", 0), **item}
            for item in page.get("Contents", [])
        ]
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token:
            return


def _remote_entries(fs: Any, root_path: str) -> Iterator[dict[str, Any]]:
    """Every object under ``root_path`` in key order: paged from S3 (never the whole listing
    at once), from ``find`` elsewhere."""
    if type(fs).__name__ == "S3FileSystem" and hasattr(fs, "set_session"):
        for page in _s3_pages(fs, root_path):
            yield from page
        return
    fs.invalidate_cache()
    for path, info in sorted(fs.find(root_path, detail=True).items()):
        yield {**info, "name": path}


def _remote_leaf(fs: Any, info: dict[str, Any], relative: str, name: str) -> Leaf | None:
    """What one object is; None for an empty folder marker (a key ending in a slash)."""
    if not name:
        if int(info.get("size") or 0) > 0:  # a key ending in "/" that holds bytes: said, unread
            reason = "an object whose key ends in '/' (a folder marker) holds data; not read"
            return SkippedEntry(relative_path=display_name(relative), reason=reason)
        return None
    problem = name_problem(name, folder=False)
    if problem is not None:
        return SkippedEntry(relative_path=display_name(relative), reason=problem)
    kind = info.get("type") or "file"
    if kind == "directory":
        return None
    if kind != "file":
        reason = f"not a regular file ({kind})"
        return SkippedEntry(relative_path=display_name(relative), reason=reason)
    size = int(info.get("size") or 0)
    return ListedFile(
        relative_path=relative,
        size=size,
        fingerprint=object_fingerprint(info),
        is_link=False,
        read_head=partial(read_object_head, fs, str(info["name"]), size, SNIFF_BYTES),
    )


def remote_leaves(
    root_url: str, skip_dir: str | None = None, options: StorageOptions | None = None
) -> Iterator[tuple[str, Leaf]]:
    """Every object under ``root_url`` by key; a bad or hidden folder is said once.

    Args:
        root_url: An fsspec URL of a prefix (``s3://bucket/prefix``).
        skip_dir: A top-level folder not to descend into (e.g. the manifest's own folder).
        options: fsspec storage options.
    """
    fs, root_path = url_to_fs(root_url, options)
    root_path = root_path.rstrip("/")
    skipped_prefix: str | None = None
    for info in _remote_entries(fs, root_path):
        name = str(info["name"])
        if not name.startswith(root_path + "/"):
            continue  # the prefix itself
        relative = name[len(root_path) + 1 :]  # "a//b" keeps its empty segment: refused below
        if skipped_prefix is not None and relative.startswith(skipped_prefix):
            continue
        parts = relative.split("/")
        if len(parts) > 1 and parts[0] == skip_dir:
            skipped_prefix = skip_dir + "/"
            continue
        for index, part in enumerate(parts[:-1]):
            problem = name_problem(part, folder=True)
            if problem is not None:
                folder = "/".join(parts[: index + 1])
                skipped_prefix = folder + "/"
                yield (
                    skipped_prefix,
                    SkippedEntry(relative_path=display_name(folder), reason=problem),
                )
                break
        else:
            leaf = _remote_leaf(fs, info, relative, parts[-1])
            if leaf is not None:
                yield relative, leaf
