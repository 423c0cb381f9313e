"""Listing an object-store prefix: every object under it by key, page by page.

On S3 the keys come from ``list_objects_v2`` through the aiobotocore client s3fs holds (its
paginator, driven page by page on s3fs's event loop), so a prefix of millions of keys is
walked with one page (1,000 keys) in memory; other fsspec filesystems are listed with
``find``. A key whose folder or name would not be processed (hidden, a control character, a
backslash, an empty or ``..`` segment) becomes a skipped entry, a bad folder said once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any, Final

from anon_tasks.core.formats import SNIFF_BYTES
from anon_tasks.core.records import SkippedEntry
from anon_tasks.datasets.entries import Leaf, ListedFile, display_name, name_problem
from anon_tasks.storage.fingerprints import object_fingerprint
from anon_tasks.storage.heads import read_object_head
from anon_tasks.storage.locations import StorageOptions, url_to_fs

__all__ = ["remote_leaves"]

#: Keys asked for in one ``list_objects_v2`` request (S3's own maximum).
S3_PAGE_SIZE: Final = 1000


async def _s3_page_iterator(fs: Any, bucket: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The pages of ``list_objects_v2`` for ``prefix``, with the filesystem's request options.

    The client is the one s3fs made from the storage options (endpoint, credentials, timeouts);
    ``s3_additional_kwargs`` and requester-pays apply where ``ListObjectsV2`` takes them, as
    they do on s3fs's own requests.
    """
    await fs.set_session()
    client = await fs.get_s3(bucket)  # the bucket's region client when ``cache_regions`` is on
    members = client.meta.service_model.operation_model("ListObjectsV2").input_shape.members
    extra = {**getattr(fs, "s3_additional_kwargs", {}), **getattr(fs, "req_kw", {})}
    kwargs = {key: value for key, value in extra.items() if key in members and value is not None}
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        **kwargs, Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": S3_PAGE_SIZE}
    )
    return pages.__aiter__()


async def _next_page(pages: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    """The next page, or None after the last; S3's errors as s3fs raises them."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    try:
        return await anext(pages, None)
    except ClientError as exc:  # NoSuchBucket is FileNotFoundError, AccessDenied PermissionError
        raise translate_boto_error(exc) from exc


async def _close_pages(pages: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(pages, "aclose", None)
    if close is not None:
        await close()


def _s3_pages(fs: Any, root_path: str) -> Iterator[list[dict[str, Any]]]:
    """One ``list_objects_v2`` page (up to 1,000 objects) at a time, in key order."""
    from fsspec.asyn import sync

    bucket, _, prefix = root_path.partition("/")
    prefix = prefix + "/" if prefix else ""
    pages = sync(fs.loop, _s3_page_iterator, fs, bucket, prefix)
    try:
        while (page := sync(fs.loop, _next_page, pages)) is not None:
            yield [
                {"name": f"{bucket}/{item['Key']}", "size": item.get("Size", 0), **item}
                for item in page.get("Contents", [])
            ]
    finally:  # a listing left early (or failed) closes its pages on the loop that ran them
        # best effort: not when the loop is gone, nor from the loop's own thread (a collector)
        with contextlib.suppress(RuntimeError, NotImplementedError):
            sync(fs.loop, _close_pages, pages)


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
