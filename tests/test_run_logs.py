"""The library's log lines reach each flow run's logs in the API, as a deployment run's do,
also from the library's worker threads, once each."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from anon_tasks.core.settings import DetectionSettings
from anon_tasks.flows import anonymize_dataset
from anon_tasks.orchestration.run_logs import LIBRARY_LOGGER

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def without_prefects_extra_logger_handler():
    """The library logger as a deployment's process has it: no Prefect handler, no level."""
    library = logging.getLogger(LIBRARY_LOGGER)
    removed = [h for h in library.handlers if isinstance(h, APILogHandler)]
    level = library.level
    for handler in removed:
        library.removeHandler(handler)
    library.setLevel(logging.NOTSET)
    yield
    for handler in removed:
        library.addHandler(handler)
    library.setLevel(level)


def _run_logs(flow_run_id) -> list[str]:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def test_library_lines_reach_the_run_logs_once(
    without_prefects_extra_logger_handler, tmp_path, astronaut_rgb
) -> None:
    source = tmp_path / "raw"
    source.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 9  # an orientation that does not exist: the library warns, in a pool thread
    Image.fromarray(astronaut_rgb).save(source / "odd.jpg", exif=exif)
    Image.fromarray(np.roll(astronaut_rgb, 50, axis=1)).save(source / "plain.png")
    state = anonymize_dataset(
        str(source), str(tmp_path / "clean"), DetectionSettings(device="cpu"), return_state=True
    )
    assert state.is_completed()
    messages = _run_logs(state.state_details.flow_run_id)
    odd = [m for m in messages if "invalid EXIF orientation" in m]
    assert len(odd) >= 1, messages
    assert len(odd) == len(set(odd))  # not twice
    assert any("inferred on cpu (CPUExecutionProvider)" in m for m in messages), messages
    library = logging.getLogger(LIBRARY_LOGGER)
    assert not [h for h in library.handlers if isinstance(h, APILogHandler)]  # detached after


def test_reports_are_keyed_per_dataset_and_say_what_ran(tmp_path, astronaut_rgb) -> None:
    """The Artifacts page keeps one history per dataset (a key from dest), and the report names
    the device, the backend and the rate."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from anon_tasks.orchestration.reporting import artifact_key

    source = tmp_path / "raw"
    source.mkdir()
    Image.fromarray(astronaut_rgb).save(source / "person.png")
    dest = str(tmp_path / "clean")
    for _ in range(2):
        anonymize_dataset(str(source), dest, DetectionSettings(device="cpu"))
    key = artifact_key("report", dest)
    assert key == key.lower()
    assert key != artifact_key("report", dest + "2")
    with get_client(sync_client=True) as client:
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
        summaries = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("summary", dest)])
            )
        )
    assert len(reports) == 2  # both runs, under one key
    assert len(summaries) == 2
    first = [r for r in reports if "1 written" in str(r.data)]
    assert first, [r.data for r in reports]
    text = str(first[0].data)
    assert "cpu" in text
    assert "CPUExecutionProvider" in text
    assert "images/s" in text


def test_a_configuration_mistake_is_one_line_and_the_state_message(tmp_path) -> None:
    from anon_tasks.core.errors import ConfigurationError

    missing = tmp_path / "no-such-folder"
    state = anonymize_dataset(
        str(missing), str(tmp_path / "clean"), DetectionSettings(device="cpu"), return_state=True
    )
    assert state.is_failed()
    assert "source=" in state.message
    assert "does not exist" in state.message
    with pytest.raises(ConfigurationError, match="does not exist"):
        state.result()
    messages = _run_logs(state.state_details.flow_run_id)
    assert [m for m in messages if "does not exist" in m and "Finished" not in m]
    assert not [m for m in messages if "Traceback" in m], messages
