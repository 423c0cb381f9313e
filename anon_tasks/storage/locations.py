"""Where a URL points: the filesystem for it, safe joins, and comparing locations.

``options`` are fsspec storage options (``endpoint_url``, ``profile``, credentials from a
Prefect block...). They are passed straight to the filesystem and never logged. Relative paths
joined onto a root must stay inside it: ``..``, absolute paths and backslashes are refused.
Comparing locations touches no storage: it reads the URL (and fsspec's protocol registry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from anon_tasks.core.errors import UnsafePathError
from anon_tasks.core.urls import filesystem_class, is_local, local_path

__all__ = [
    "S3_CONNECT_TIMEOUT_S",
    "S3_READ_TIMEOUT_S",
    "StorageOptions",
    "join_url",
    "location_within",
    "normalize_location",
    "safe_relative_path",
    "url_to_fs",
]

StorageOptions = Mapping[str, Any]

#: botocore timeouts s3fs gets when the storage options name none (``config_kwargs``).
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 30.0

_S3_PROTOCOLS = frozenset({"s3", "s3a", "s3n"})
#: Protocols that name the same storage, by the family they are compared in.
_FAMILIES = {
    "s3": "s3",
    "s3a": "s3",
    "s3n": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "abfs",
    "abfs": "abfs",
    "abfss": "abfs",
    "file": "file",
    "local": "file",
}


def url_to_fs(url: str, options: StorageOptions | None = None) -> tuple[Any, str]:
    """The fsspec filesystem and path for ``url`` (instances are cached by fsspec).

    S3 filesystems get connect and read timeouts (``config_kwargs``) unless the options set
    them, so a stalled connection fails and is retried instead of hanging a worker.
    """
    kwargs = dict(options or {})
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in _S3_PROTOCOLS:
        config = dict(kwargs.get("config_kwargs") or {})
        config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT_S)
        config.setdefault("read_timeout", S3_READ_TIMEOUT_S)
        kwargs["config_kwargs"] = config
    return fsspec.core.url_to_fs(url, **kwargs)


def safe_relative_path(relative: str) -> str:
    """``relative`` if it stays inside whatever root it is joined to.

    ``a:b.jpg`` is a legal POSIX name and is accepted; on Windows a colon (a drive letter or
    an alternate data stream) is refused.

    Raises:
        UnsafePathError: It is absolute, contains ``..``, ``.`` or empty segments, backslashes
            or NUL, or (on Windows only) a colon.
    """
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or "\x00" in relative
        or any(part in ("", ".", "..") for part in parts)
        or (os.name == "nt" and ":" in relative)
    ):
        raise UnsafePathError(
            "path escapes its root or is not a plain relative path", source=relative
        )
    return relative


def join_url(base: str, relative: str) -> str:
    """``base`` joined with a POSIX relative path that must stay inside it."""
    safe_relative_path(relative)
    if is_local(base):
        return str(local_path(base) / PurePosixPath(relative))
    return base.rstrip("/") + "/" + relative


def normalize_location(url: str, options: StorageOptions | None = None) -> tuple[str, str]:
    """The storage family and absolute normal path of ``url``, for comparing locations.

    Local paths (plain, ``file://`` or ``local://``) are ``("file", real path)``: absolute,
    every link resolved, ``..`` applied. ``s3://``, ``s3a://`` and ``s3n://`` are family ``s3``
    and the path is ``bucket/key`` with repeated, trailing and ``.`` separators dropped; ``..``
    is kept, since an object store keeps it literally. Other fsspec protocols are named by
    their filesystem's first protocol (``gcs`` is ``gs``) and normalised the same way. No
    filesystem is opened.

    Args:
        url: A local path or fsspec URL (a chained URL is compared by its last link, the
            storage that holds the bytes).
        options: fsspec storage options; accepted for symmetry, locations need none.
    """
    del options  # a location is known from the URL alone
    if "::" in url:
        url = url.rsplit("::", 1)[1]
    if is_local(url):
        return "file", os.path.realpath(local_path(url))
    protocol = url.split("://", 1)[0].lower()
    path = url.split("://", 1)[1]
    family = _FAMILIES.get(protocol)
    if family is None:
        cls = filesystem_class(protocol)
        if cls is not None:
            names = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
            family = "file" if issubclass(cls, LocalFileSystem) else names[0]
            path = cls._strip_protocol(url)
        else:
            family = protocol
    if family == "file":
        return "file", os.path.realpath(path)
    return family, "/".join(part for part in path.split("/") if part not in ("", "."))


def location_within(inner: str, outer: str, options: StorageOptions | None = None) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it, on the same storage.

    Compared by :func:`normalize_location`, path segment by segment (``s3://b/raw2`` is not
    inside ``s3://b/raw``). On object stores a key with ``..`` counts as inside when it is so
    either literally (as the store keeps it) or with ``..`` applied (as a person reads it): when
    in doubt, inside.
    """
    inner_family, inner_path = normalize_location(inner, options)
    outer_family, outer_path = normalize_location(outer, options)
    if inner_family != outer_family:
        return False
    if inner_family == "file":
        return _path_within(inner_path, outer_path, os.sep)
    return _path_within(inner_path, outer_path, "/") or _path_within(
        _apply_parent_segments(inner_path), _apply_parent_segments(outer_path), "/"
    )


def _path_within(inner: str, outer: str, separator: str) -> bool:
    if inner == outer or not outer or outer == separator:
        return True
    return inner.startswith(outer.rstrip(separator) + separator)


def _apply_parent_segments(path: str) -> str:
    """``path`` with each ``..`` removing the segment before it (never the first: the bucket)."""
    kept: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if len(kept) > 1:
                kept.pop()
        else:
            kept.append(part)
    return "/".join(kept)
