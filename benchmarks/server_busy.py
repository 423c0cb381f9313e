"""How often a SQLite-backed ``prefect server start`` refuses to create a deployment's run.

Usage::

    python benchmarks/server_busy.py [--requests 150] [--poll-seconds 1 10] [--json out.json]

Starts a server on 127.0.0.1 with a temporary home and SQLite database, deploys
``anonymize-dataset/cpu`` from ``deployments/prefect.yaml``, and posts ``--requests`` runs to
``/deployments/{id}/create_flow_run`` (scheduled years ahead, so nothing executes them), one
every 130 ms, first with no worker, then with a process worker on the deployment's pool
polling every N seconds, for each N of ``--poll-seconds``. Prints the HTTP statuses of each
case. A 503 is the server's "database is locked": Prefect's Python client retries it; the UI's
custom-run form and an automation's run-deployment action do not (README, "A busy SQLite
server").
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BIN,
    REPO_ROOT,
    start_prefect_server,
    start_process_group,
    stop_process_group,
)

logger = logging.getLogger("server_busy")

POOL = "anon-cpu"
DEPLOYMENT = "anonymize-dataset/cpu"
REQUEST_GAP_SECONDS = 0.13
WORKER_SETTLE_SECONDS = 5


def post(url: str, body: dict) -> int:
    """POSTs ``body`` as JSON; the response's status."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def statuses(api: str, deployment_id: str, requests: int) -> Counter[int]:
    """The statuses of ``requests`` runs created from the deployment."""
    body = {
        "parameters": {"source": "/nonexistent/raw", "dest": "/nonexistent/clean"},
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "2099-01-01T00:00:00Z"}},
    }
    counts: Counter[int] = Counter()
    for _ in range(requests):
        counts[post(f"{api}/deployments/{deployment_id}/create_flow_run", body)] += 1
        time.sleep(REQUEST_GAP_SECONDS)
    return counts


def run_case(requests: int, poll_seconds: float | None) -> dict:
    """One server from scratch; ``poll_seconds`` None runs no worker."""
    settings = {} if poll_seconds is None else {"PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)}
    with tempfile.TemporaryDirectory(prefix="server-busy-") as home:
        server, env = start_prefect_server(Path(home), **settings)
        api, worker = env["PREFECT_API_URL"], None
        try:
            for args in (
                ["work-pool", "create", POOL, "--type", "process"],
                ["deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "cpu"],
            ):
                subprocess.run(
                    [str(BIN / "prefect"), "--no-prompt", *args],
                    env=env,
                    cwd=REPO_ROOT,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
            with urllib.request.urlopen(f"{api}/deployments/name/{DEPLOYMENT}") as response:
                deployment_id = json.load(response)["id"]
            if poll_seconds is not None:
                command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL]
                worker = start_process_group(command, env)
                time.sleep(WORKER_SETTLE_SECONDS)
            counts = statuses(api, deployment_id, requests)
        finally:
            if worker is not None:
                stop_process_group(worker)
            stop_process_group(server)
    return {
        "worker_poll_seconds": poll_seconds,
        "requests": requests,
        "statuses": dict(sorted(counts.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--poll-seconds", type=float, nargs="*", default=[1.0, 10.0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    for poll_seconds in [None, *args.poll_seconds]:
        result = run_case(args.requests, poll_seconds)
        worker = "no worker" if poll_seconds is None else f"a worker polling every {poll_seconds} s"
        refused = result["statuses"].get(503, 0)
        logger.info("%s: %s (503 in %d of %d)", worker, result["statuses"], refused, args.requests)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
