"""A run's storage options, resolved once: plain options plus a Prefect credentials block's.

prefect-aws's ``AwsCredentials`` (and blocks shaped like it) map onto s3fs options. A block is
loaded once per process; the result holds secrets and is never logged, persisted or put in a
cache key (``ResolvedStorage`` hides its values).
"""

from __future__ import annotations

import threading
from typing import Any

from anon_tasks.core.settings import RunSettings
from anon_tasks.storage.resolved import ResolvedStorage

__all__ = ["resolve_storage"]

_block_options: dict[str, dict[str, Any]] = {}
_blocks_lock = threading.Lock()


def resolve_storage(run: RunSettings) -> ResolvedStorage:
    """The fsspec options ``run`` reaches its source, dest and result storage with.

    Example:
        >>> storage = resolve_storage(RunSettings(credentials_block="aws-credentials/datasets"))
    """
    options: dict[str, Any] = dict(run.storage_options)
    if run.credentials_block:
        options.update(_block_storage_options(run.credentials_block))
    return ResolvedStorage(options)


def _block_storage_options(slug: str) -> dict[str, Any]:
    """fsspec options from a credentials block (prefect-aws ``AwsCredentials`` fields)."""
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
