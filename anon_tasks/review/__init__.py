"""The review page: thumbnails of masked outputs with masks and near misses outlined.

Pure (no Prefect): ``write_review`` draws ``<dest>/_anonymize/review/`` from a run's manifest
rows and the outputs in dest.
"""

from anon_tasks.review.writer import REVIEW_DIR, ReviewRequest, review_url, write_review

__all__ = ["REVIEW_DIR", "ReviewRequest", "review_url", "write_review"]
