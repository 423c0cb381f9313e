"""The review task: the run's review page, drawn from its manifest rows and outputs in dest."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anon_tasks.core.errors import AnonTasksError
from anon_tasks.core.records import ManifestRow
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.detection.detector import detection_floor
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
    warning, not a failed run.

    Returns:
        The page's URL; None when ``run.review_images`` is 0 or it could not be written.
    """
    threshold = render.detection.threshold
    request = ReviewRequest(
        source=source,
        dest=dest,
        masking=render.masking,
        threshold=threshold,
        score_floor=detection_floor(threshold),
        limit=render.run.review_images,
        max_pixels=render.output.max_pixels,
        options=storage.options,
    )
    try:
        return write_review(rows, request)  # logs where the page is
    except (AnonTasksError, OSError) as exc:
        get_run_logger().warning("no review page: %s", exc)
        return None
