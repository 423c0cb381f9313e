"""The gpu deployment's event trigger, end to end against a real server and worker: an event as
the README shows it starts a run that completes; a matching event that lacks ``dest`` starts a
run that fails naming it (never an action failing quietly in the event feed)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_deployments import BIN, prefect_cli, prefect_server, stop_group  # noqa: F401

RUN_WAIT_SECONDS = 240


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
        prefect_cli(
            env,
            "event", "emit", "training-data.dataset.ready",
            "--resource-id", "training-data.dataset.faces-test",
            "--payload", json.dumps({"source": str(source), "dest": str(dest)}),
        )  # fmt: skip
        runs = _wait_for(env, 1)
        assert [r["type"] for r in runs] == ["COMPLETED"], runs
        assert (dest / "person.png").is_file()
        prefect_cli(
            env,
            "event", "emit", "training-data.dataset.ready",
            "--resource-id", "training-data.dataset.no-dest",
            "--payload", json.dumps({"source": str(source)}),
        )  # fmt: skip
        runs = _wait_for(env, 2)
        failed = [r for r in runs if r["type"] == "FAILED"]
        assert len(failed) == 1, runs
        assert "dest is empty" in failed[0]["message"], failed
    finally:
        stop_group(worker)
    assert not Path.cwd().joinpath("_anonymize").exists()
