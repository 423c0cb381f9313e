"""End to end against real components: a Prefect server, a work pool, two workers, deployments.

Starts ``prefect server start`` on 127.0.0.1 with a temporary PREFECT_HOME and SQLite database,
deploys every deployment of ``deployments/prefect.yaml``, starts two process workers through
``anonymize-workers`` with logical devices ``cpu:0`` and ``cpu:1``, and runs the partitioned
parent flow over a small dataset. Stops the workers before the server; leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


def stop_group(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, wait, SIGKILL what is left; then the group must be gone."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on 127.0.0.1 with its own home and SQLite database."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "ANON_TASKS_LOCK_DIR": str(tmp_path / "locks"),
    }
    for name in ("PREFECT_PROFILES_PATH", "ANON_TASKS_DEVICES"):
        env.pop(name, None)
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_health(api, server, SERVER_START_TIMEOUT)
        yield env
    finally:
        stop_group(server)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def api(env: dict[str, str], path: str, body: dict | None = None) -> dict | list:
    """GET from the server's API, or POST ``body`` as JSON."""
    if body is None:
        return get_json(env["PREFECT_API_URL"] + path)
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


PARENT = """
import json, sys
from anon_tasks.flows import anonymize_partitioned
from anon_tasks.core.settings import RunSettings
state = anonymize_partitioned(
    sys.argv[1], sys.argv[2], partitions=2, deployment="anonymize-dataset/gpu",
    run=RunSettings(shard_size=2), timeout_seconds=240, return_state=True,
)
summary = state.result(raise_on_failure=False)
print("SUMMARY " + json.dumps({"state": state.type.value, **summary.model_dump(mode="json")}))
"""


def run_parent(env: dict[str, str], source: Path, dest: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PARENT, str(source), str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("SUMMARY "))


def test_partitions_fan_out_to_two_workers(prefect_server, tmp_path, astronaut_rgb) -> None:
    env = prefect_server
    source, dest = tmp_path / "raw", tmp_path / "clean"
    names = [f"batch{index % 3}/photo_{index:02d}.png" for index in range(8)]
    for index, name in enumerate(names):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(astronaut_rgb, 40 * index, axis=1)).save(source / name)

    for pool in ("anon-cpu", "anon-gpu"):
        prefect_cli(env, "work-pool", "create", pool, "--type", "process")
    prefect_cli(env, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    listed = prefect_cli(env, "deployment", "ls")
    for name in ("anonymize-dataset/cpu", "anonymize-dataset/gpu", "anonymize-partitioned/fan-out"):
        assert name in listed

    workers_log = (tmp_path / "workers.log").open("wb")
    workers = subprocess.Popen(
        [str(BIN / "anonymize-workers"), "--pool", "anon-gpu", "--devices", "cpu:0,cpu:1"],
        env=env,
        stdout=workers_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        summary = run_parent(env, source, dest)
        assert summary["state"] == "COMPLETED"
        assert summary["images_total"] == summary["images_written"] == len(names)
        assert summary["images_inferred"] == len(names)  # nothing was done twice
        assert summary["devices"] == ["cpu:0", "cpu:1"]  # both workers ran a partition
        manifest = [
            json.loads(line)
            for line in (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
        ]
        assert sorted(row["source"] for row in manifest) == sorted(names)
        assert all(row["status"] == "written" and row["faces"] for row in manifest)
        parts = sorted((dest / "_anonymize").glob("manifest.part-*-of-0002.jsonl"))
        assert len(parts) == 2
        part_sources = [
            {json.loads(x)["source"] for x in p.read_text().splitlines()} for p in parts
        ]
        assert not part_sources[0] & part_sources[1]
        merged = json.loads((dest / "_anonymize" / "summary.json").read_text())
        assert merged["images_written"] == len(names)  # the parent's merged summary
        assert merged["backends"] == ["CPUExecutionProvider"]
        # One review of the whole dataset, by the parent; none per partition.
        assert merged["review"] == str(dest / "_anonymize" / "review" / "index.html")
        assert (dest / "_anonymize" / "review" / "index.html").read_text().count("<figure") == 8
        umask = os.umask(0)
        os.umask(umask)
        for name in names:  # written by a worker's flow process, readable as the umask allows
            assert stat.S_IMODE((dest / name).stat().st_mode) == 0o666 & ~umask

        (dest / names[0]).unlink()
        again = run_parent(env, source, dest)
        assert again["state"] == "COMPLETED"
        assert again["images_inferred"] == 0  # the rerun redoes only what is missing
        assert again["images_written"] == 1
        assert again["images_unchanged"] == len(names) - 1
    finally:
        stop_group(workers)  # workers first, then the server (fixture teardown)
        workers_log.close()
    started = (tmp_path / "workers.log").read_text(errors="replace")
    assert "starting worker" in started
    assert "422 Unprocessable" not in started  # no noise from other libraries' INFO lines
