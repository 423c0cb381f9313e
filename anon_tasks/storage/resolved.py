"""The one storage value a run passes down: fsspec options for all its locations, resolved once.

A run reaches its source, dest and result storage with the same options: the plain
``run.storage_options`` merged with what its credentials block holds. The Prefect layer resolves
them once per run (``orchestration.credentials.resolve_storage``) and every stage below takes
this value instead of the pair of settings. It holds secrets: its repr names the options and
never shows their values, it refuses to be pickled (so no task runner persists or ships it),
and it never enters a cache key, a manifest, a result or a log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["NO_OPTIONS", "ResolvedStorage"]


@dataclass(frozen=True, eq=False, repr=False)
class ResolvedStorage:
    """fsspec storage options for every location of one run (secrets included).

    Attributes:
        options: Passed straight to fsspec (``endpoint_url``, ``key``, ``secret``...).

    Example:
        >>> storage = ResolvedStorage({"endpoint_url": "http://127.0.0.1:9000"})
        >>> read_bytes("s3://bucket/a.jpg", storage.options)
    """

    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __repr__(self) -> str:
        return f"ResolvedStorage(options=<{', '.join(sorted(self.options)) or 'none'}>)"

    def __reduce__(self) -> Any:
        """Refuse to be pickled: a task runner or scheduler that would persist or ship task
        parameters must not carry credentials (resolve them where the task runs instead)."""
        raise TypeError(
            "ResolvedStorage holds credentials and is never serialised; pass RunSettings and "
            "call resolve_storage(run) in the process that uses it"
        )


#: Local paths, and remote ones through the environment's credential chain.
NO_OPTIONS = ResolvedStorage()
