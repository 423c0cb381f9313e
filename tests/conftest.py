"""Shared fixtures: real photos from scikit-image and the shared evaluation corpus."""

from __future__ import annotations

import importlib
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest

# Libraries that draw from the global `random` module on background threads: aiohttp's
# connector shuffles its waiters when fsspec's IO thread releases an S3 connection (whenever an
# earlier test's response is finished or collected); websockets picks ping payloads for
# Prefect's event-stream keepalive on Prefect's loop thread. Hypothesis compares the global
# random state before and after each draw and takes such a change for the strategy's own use
# of `random` (HypothesisDeprecationWarning, an error here), failing whichever @given test
# happens to be drawing. A generator of their own keeps them off the state Hypothesis watches.
_BACKGROUND_RANDOM_USERS = (
    "aiohttp.connector",
    "aiohttp._websocket.writer",
    "websockets.asyncio.connection",
    "websockets.client",
    "websockets.legacy.protocol",
    "websockets.legacy.client",
    "websockets.sync.connection",
)
for _name in _BACKGROUND_RANDOM_USERS:
    _module = importlib.import_module(_name)
    if getattr(_module, "random", None) is random:
        _module.random = random.Random()  # type: ignore[attr-defined]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The read-only corpus beside the checkout; ANON_TASKS_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("ANON_TASKS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
#: Set by .ci/run: a test that needs the corpus fails instead of skipping when it is absent.
REQUIRE_SHARED = os.environ.get("ANON_TASKS_REQUIRE_SHARED_DATA", "") not in ("", "0")


def shared_path(*parts: str) -> Path:
    """Path into ``../shared/data``; skips the test (or fails under CI) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared test data not found: {path} (set ANON_TASKS_SHARED_DATA)"
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """scikit-image's astronaut photo, 512x512 RGB uint8, one frontal face."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def camera_gray() -> np.ndarray:
    """scikit-image's cameraman photo, 512x512 grayscale uint8, one face in profile."""
    from skimage import data

    return np.ascontiguousarray(data.camera())


@pytest.fixture
def model_inputs(monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of every model input from here on (NHWC), in the order the model ran them."""
    from anon_tasks.detection.runtime import InferenceSession

    shapes: list[tuple[int, ...]] = []
    real_run = InferenceSession.run

    def recording_run(self, batch):
        shapes.append(batch.shape)
        return real_run(self, batch)

    monkeypatch.setattr(InferenceSession, "run", recording_run)
    return shapes


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect API (temporary server and SQLite database) for the whole session.

    Heartbeats and telemetry are off, and PREFECT_HOME is a temporary folder.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "anon_tasks")
    # Library code also logs outside flow runs in tests; that is not an error.
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    updates = {
        prefect_settings.PREFECT_HOME: str(home),
        prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        prefect_settings.PREFECT_SERVER_ANALYTICS_ENABLED: False,
        prefect_settings.PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
    }
    with prefect_settings.temporary_settings(updates=updates), prefect_test_harness():
        yield


def release_fifos(root: Path) -> None:
    """Open every FIFO under ``root`` for writing, so that a reader blocked on one returns."""
    for folder, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in filenames + dirnames:
            path = os.path.join(folder, name)
            try:
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                continue
