"""Checks before any work: a run that would read nothing or write into the source is refused.

Every check raises ``ConfigurationError`` naming the field, so the CLI exits 2 with one line
and a flow run fails before its first task.
"""

from __future__ import annotations

from anon_tasks.core.settings import BLOCK_SLUG, RunSettings
from anon_tasks.datasets.paths import check_dataset_paths
from anon_tasks.orchestration.result_storage import check_block_storage
from anon_tasks.storage.resolved import ResolvedStorage

__all__ = ["check_paths"]


def check_paths(source: str, dest: str, run: RunSettings, storage: ResolvedStorage) -> None:
    """Refuse, before any work, a run that would read nothing or write into the source.

    Raises:
        ConfigurationError: See ``anon_tasks.datasets.paths.check_dataset_paths``; a result
            storage block that stores in the source, or cannot say where it stores.
    """
    check_dataset_paths(source, dest, result_storage=run.result_storage, options=storage.options)
    if run.result_storage is not None and BLOCK_SLUG.match(run.result_storage):
        check_block_storage(run.result_storage, source)
