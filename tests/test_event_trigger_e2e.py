"""The gpu deployment's event trigger, end to end against a real server and worker: an event as
the README shows it starts a run that completes; a matching event that lacks ``dest`` starts a
run that fails naming it (never an action failing quietly in the event feed).

Prefect's SQLite server refuses a write now and then when its database is busy (503, "database
is locked"), and an automation's run action does not retry it: the action fails in the event
feed with that status and no run starts. The test then emits the event again, as the README
tells an upstream flow to, at most EMIT_ATTEMPTS times; an action that fails for any other
reason fails the test at once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_deployments import (  # noqa: F401 (prefect_server: the fixture)
    BIN,
    api,
    prefect_cli,
    prefect_server,
    stop_group,
)

RUN_WAIT_SECONDS = 240
ACTION_WAIT_SECONDS = 60
EMIT_ATTEMPTS = 3
#: The reason of a run action the server refused as busy (prefect.server.events.actions).
BUSY_REASON = "Unexpected status from 'run-deployment' action: 503"


def _runs(env: dict[str, str]) -> list[dict]:
    """Every flow run of anonymize-dataset/gpu: (name, state type, message)."""
    script = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName\n"
        "with get_client(sync_client=True) as client:\n"
        "    runs = client.read_flow_runs(deployment_filter=DeploymentFilter("
        "name=DeploymentFilterName(any_=['gpu'])))\n"
        "print(json.dumps([{'type': r.state.type.value if r.state else None, "
        "'message': r.state.message if r.state else '', 'parameters': r.parameters} "
        "for r in runs]))\n"
    )
    done = subprocess.run(
        [str(BIN / "python"), "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _failed_actions(env: dict[str, str]) -> dict[str, str]:
    """Every prefect.automation.action.failed event in the feed: id -> reason."""
    found = api(
        env,
        "/events/filter",
        {"filter": {"event": {"name": ["prefect.automation.action.failed"]}}, "limit": 50},
    )
    return {event["id"]: event["payload"].get("reason", "") for event in found["events"]}


def _emit(env: dict[str, str], resource_id: str, payload: dict[str, str]) -> None:
    """Emits training-data.dataset.ready until its action starts a run of the deployment;
    again after an action the busy server refused, at most EMIT_ATTEMPTS times."""
    runs_before, failed_before = len(_runs(env)), set(_failed_actions(env))
    for _attempt in range(EMIT_ATTEMPTS):
        prefect_cli(
            env,
            "event", "emit", "training-data.dataset.ready",
            "--resource-id", resource_id,
            "--payload", json.dumps(payload),
        )  # fmt: skip
        deadline = time.monotonic() + ACTION_WAIT_SECONDS
        while time.monotonic() < deadline:
            if len(_runs(env)) > runs_before:
                return
            failed = {k: v for k, v in _failed_actions(env).items() if k not in failed_before}
            if failed:
                assert set(failed.values()) == {BUSY_REASON}, failed
                failed_before |= set(failed)
                break
            time.sleep(1)
        else:
            raise AssertionError(
                f"no run and no failed action {ACTION_WAIT_SECONDS} s after the event"
            )
    raise AssertionError(f"the server refused the run action {EMIT_ATTEMPTS} times as busy")


def _wait_for(env: dict[str, str], count: int) -> list[dict]:
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = _runs(env)
        finished = [r for r in runs if r["type"] in ("COMPLETED", "FAILED", "CRASHED")]
        if len(finished) >= count:
            return runs
        time.sleep(2)
    raise AssertionError(f"runs did not finish: {runs}")


def test_an_event_starts_a_run_and_a_partial_one_fails_naming_the_field(
    prefect_server,  # noqa: F811 (the fixture imported above)
    tmp_path,
    astronaut_rgb,
) -> None:
    env = prefect_server
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    Image.fromarray(np.roll(astronaut_rgb, 30, axis=1)).save(source / "person.png")
    for pool in ("anon-cpu", "anon-gpu"):
        prefect_cli(env, "work-pool", "create", pool, "--type", "process")
    prefect_cli(env, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    worker = subprocess.Popen(
        [str(BIN / "anonymize-workers"), "--pool", "anon-gpu", "--devices", "cpu:0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(3)  # the automation is created with the deployment; let the server load it
        _emit(env, "training-data.dataset.faces-test", {"source": str(source), "dest": str(dest)})
        runs = _wait_for(env, 1)
        assert [r["type"] for r in runs] == ["COMPLETED"], runs
        assert (dest / "person.png").is_file()
        _emit(env, "training-data.dataset.no-dest", {"source": str(source)})
        runs = _wait_for(env, 2)
        failed = [r for r in runs if r["type"] == "FAILED"]
        assert len(failed) == 1, runs
        assert "dest is empty" in failed[0]["message"], failed
    finally:
        stop_group(worker)
    assert not Path.cwd().joinpath("_anonymize").exists()
