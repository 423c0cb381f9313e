"""The library's own log lines in every flow run's logs, wherever the run runs.

Below the tasks, modules log with ``logging.getLogger(__name__)`` (no Prefect). Prefect ships
only its own loggers to the API unless ``PREFECT_LOGGING_EXTRA_LOGGERS`` names others, and a
deployment's process often has neither that variable nor a level that lets INFO through. The
device chosen, the backend, a fallback to the CPU or to exact precision, a skipped file: these
are the lines a user reads in the UI. So each flow run attaches, for its duration, a handler
that sends ``anon_tasks`` records at INFO and above to the run's logs, stamped with the run's
id (records from the library's worker threads carry no run context of their own). Where
Prefect already ships them (``PREFECT_LOGGING_EXTRA_LOGGERS=anon_tasks``, as the CLI sets),
only the level is raised to INFO for the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler

__all__ = ["LIBRARY_LOGGER", "library_logs_in_run"]

#: The logger every module below the tasks logs under.
LIBRARY_LOGGER = "anon_tasks"


class _StampRun(logging.Filter):
    """Gives records without a run the id of the run that attached the handler."""

    def __init__(self, flow_run_id: object) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_run_id", None) is None:
            record.flow_run_id = self.flow_run_id
        return True


def _shipped_by_prefect(library: logging.Logger) -> bool:
    """Whether Prefect already sends the library's records: ``PREFECT_LOGGING_EXTRA_LOGGERS``
    naming it gives it Prefect's API handler when logging is set up (but not a level, so its
    INFO lines were dropped all the same)."""
    return any(isinstance(handler, APILogHandler) for handler in library.handlers)


@contextmanager
def library_logs_in_run() -> Iterator[None]:
    """Within a flow run: ``anon_tasks`` records at INFO and above go to the run's logs."""
    context = FlowRunContext.get()
    library = logging.getLogger(LIBRARY_LOGGER)
    level = library.level
    if library.getEffectiveLevel() > logging.INFO:
        library.setLevel(logging.INFO)
    handler = None
    if context is not None and context.flow_run is not None and not _shipped_by_prefect(library):
        handler = APILogHandler(level=logging.INFO)
        handler.addFilter(_StampRun(context.flow_run.id))
        library.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            library.removeHandler(handler)
        library.setLevel(level)
