"""The URL rule every location a run is given follows, and how URLs are shown in logs.

A location is a plain path, ``file://...`` or ``protocol://...`` for a protocol fsspec knows.
These functions only read the string (and fsspec's protocol registry); they touch no storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["filesystem_class", "is_local", "local_path", "redact_url", "url_problem"]


def is_local(url: str) -> bool:
    """Whether ``url`` names a file on the local filesystem."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> Path:
    """The filesystem path of a local URL (a plain path or ``file://``)."""
    return Path(url[len("file://") :] if url.startswith("file://") else url)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a dataset location, or None when it can.

    The one rule for the URLs a run is given (source, dest, result storage, model path):

    * a plain path, ``file://``, or ``protocol://`` with a protocol fsspec knows, in lower case
      (``S3://`` is not a protocol fsspec reads);
    * no chain (``a::b``): fsspec writes through the first link and stores in the last, so one
      location would be checked and another written;
    * no user or password before the host, and no query string: credentials have no place in
      a URL that is logged, stored as a flow parameter and shown in the Prefect UI.
    """
    if "::" in url:
        return "chained URLs (a::b) are not supported: name the one storage to use"
    if "://" not in url:
        return None
    scheme, _, rest = url.partition("://")
    if scheme != scheme.lower():
        return f"the protocol {scheme!r} must be written in lower case"
    if scheme != "file" and filesystem_class(scheme) is None:
        return f"unknown storage protocol {scheme!r}"
    if "@" in rest.split("/", 1)[0]:
        return (
            "a user or password in the URL: keep credentials out of URLs and use "
            "credentials_block or the AWS credential chain"
        )
    if "?" in rest:
        return "a query string in the URL is not supported (it may carry a credential)"
    return None


def redact_url(url: str) -> str:
    """``url`` without what may hold a credential: a user and password, a query string.

    ``s3://KEY:SECRET@bucket/x`` becomes ``s3://***@bucket/x`` and a pre-signed or SAS URL
    loses its ``?...`` part; a plain path comes back unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def filesystem_class(protocol: str) -> Any:
    """fsspec's filesystem class for ``protocol``, or None when unknown or not installed."""
    import fsspec  # the protocol registry only; no filesystem is built

    try:
        return fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return None
