"""``anonymize-workers``: create a work pool and start one Prefect process worker per device.

On a GPU host each worker sees exactly one GPU (``CUDA_VISIBLE_DEVICES``) and takes ``--limit``
flow runs at a time (default 1), which share its device through the device lease, so the pool
hands each run a device it does not fight another worker for::

    anonymize-workers --pool anon-gpu                      # one worker per visible GPU
    anonymize-workers --pool anon-gpu --devices 0,2        # GPUs 0 and 2 only
    anonymize-workers --pool anon-gpu --limit 2            # two runs at a time per GPU
    anonymize-workers --pool anon-cpu --devices cpu:0,cpu:1  # logical CPU devices

A host with no visible GPU gets one CPU worker (``cpu:0``) and a log line saying so, so the
same command works when pasted on any host. The command stays in the foreground and stops its
workers on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from anon_tasks.detection.devices import MAX_SLOTS, SLOTS_ENV

logger = logging.getLogger("anon_tasks.orchestration.workers")  # also when run as __main__

#: Seconds a worker gets to stop after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to start: its name, the device it owns and its extra environment."""

    name: str
    device: str
    env: dict[str, str]


def worker_specs(
    devices: Sequence[str], *, pool: str, prefix: str, runs_per_device: int = 1
) -> list[WorkerSpec]:
    """One worker per device: a GPU (physical index or ``cuda:N``) or a logical ``cpu:N``,
    whose runs may share it ``runs_per_device`` at a time."""
    host = socket.gethostname().split(".")[0]
    specs = []
    for device in devices:
        device = device.strip().lower()
        if device.startswith("cpu"):
            env = {"ANON_TASKS_DEVICES": device, "CUDA_VISIBLE_DEVICES": ""}
        else:
            physical = device.removeprefix("cuda:")
            if not physical.isdigit():
                raise SystemExit(f"--devices: {device!r} is not a GPU index, cuda:N or cpu:N")
            device = f"cuda:{physical}"
            # The worker's runs see only this GPU, as their cuda:0.
            env = {"CUDA_VISIBLE_DEVICES": physical, "ANON_TASKS_DEVICES": "cuda:0"}
        env[SLOTS_ENV] = str(runs_per_device)
        name = f"{prefix}-{host}-{device.replace(':', '')}"
        specs.append(WorkerSpec(name=name, device=device, env=env))
    return specs


def visible_gpus() -> list[str]:
    """Physical indices of the GPUs this process may hand out."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return [part.strip() for part in visible.split(",") if part.strip()]
    from anon_tasks.detection.devices import visible_cuda_device_count

    return [str(index) for index in range(visible_cuda_device_count())]


def devices_to_serve(requested: str) -> list[str]:
    """The devices named by ``--devices``: every visible GPU for ``auto``, else one CPU worker
    (a CPU run uses every core), with a log line saying why."""
    if requested != "auto":
        return [part.strip() for part in requested.split(",") if part.strip()]
    gpus = visible_gpus()
    if gpus:
        return gpus
    logger.warning(
        "no GPU is visible: starting one CPU worker (cpu:0); its runs use every core of this "
        "host (--devices cpu:0,cpu:1 for two workers sharing them)"
    )
    return ["cpu:0"]


def ensure_pool(pool: str, pool_type: str) -> None:
    """Create the work pool when it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type))
            logger.info("created work pool %s (%s)", pool, pool_type)
        except ObjectAlreadyExists:
            logger.info("work pool %s exists", pool)


def start_worker(spec: WorkerSpec, *, pool: str, limit: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "prefect", "worker", "start",
        "--pool", pool, "--name", spec.name, "--type", "process", "--limit", str(limit),
    ]  # fmt: skip
    logger.info("starting worker %s on %s", spec.name, spec.device)
    return subprocess.Popen(command, env={**os.environ, **spec.env})


def stop_workers(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker, wait for them, kill those still running after the grace period."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anonymize-workers",
        description="Create a work pool and start one Prefect process worker per device.",
    )
    parser.add_argument("--pool", default="anon-gpu", help="work pool name (default anon-gpu)")
    parser.add_argument(
        "--devices",
        default="auto",
        help="'auto' (every visible GPU), GPU indices '0,1', or logical CPU devices 'cpu:0,cpu:1'",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=1,
        help="flow runs at once per worker, sharing its device (default 1)",
    )
    parser.add_argument("--prefix", default="anon", help="worker name prefix")
    parser.add_argument("--no-create-pool", action="store_true", help="do not create the pool")
    args = parser.parse_args(argv)
    # This command's own lines at INFO; other libraries' (httpx logs every request, among them
    # the client's CSRF probe that a server without CSRF answers 422) at WARNING only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("anon_tasks").setLevel(logging.INFO)

    devices = devices_to_serve(args.devices)
    if not devices:
        logger.error("--devices names no device; give GPU indices '0,1' or 'cpu:0'")
        return 2
    if not 1 <= args.limit <= MAX_SLOTS:
        parser.error(f"--limit must be from 1 to {MAX_SLOTS}")
    specs = worker_specs(devices, pool=args.pool, prefix=args.prefix, runs_per_device=args.limit)
    if not args.no_create_pool:
        ensure_pool(args.pool, "process")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    processes = [start_worker(spec, pool=args.pool, limit=args.limit) for spec in specs]
    try:
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.2)
    finally:
        stop_workers(processes)
    failed = [p.returncode for p in processes if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    raise SystemExit(main())
