"""The review task: the run's review page, drawn from its manifest rows and outputs in dest."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anon_tasks.core.errors import AnonTasksError
from anon_tasks.core.records import ManifestRow
from anon_tasks.core.settings import AnonymizeMethod
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.review import ReviewRequest, write_review
from anon_tasks.storage.resolved import ResolvedStorage

__all__ = ["write_review_page"]


@task(name="write-review-page", cache_policy=NO_CACHE, persist_result=False)
def write_review_page(
    rows: Sequence[ManifestRow],
    source: str,
    dest: str,
    render: RenderSpec,
    storage: ResolvedStorage,
) -> str | None:
    """Write ``<dest>/_anonymize/review/index.html`` for a run whose manifest holds ``rows``.

    The outputs are anonymised whatever happens here: a review that cannot be written is a
    warning, not a failed run. A detect-only run (method none) leaves dest as it is: no page.

    Returns:
        The page's URL; None for method none, when ``run.review_images`` is 0, or when it
        could not be written.
    """
    if render.masking.method is AnonymizeMethod.NONE:
        return None
    try:
        request = ReviewRequest.for_run(source, dest, render, storage.options)
        return write_review(rows, request)  # logs where the page is
    except (AnonTasksError, OSError) as exc:
        get_run_logger().warning("no review page: %s", exc)
        return None
