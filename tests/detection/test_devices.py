"""Device allocation without GPUs: logical devices, exclusive leases released on crash, spread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.errors import DeviceBusyError
from anon_tasks.detection.devices import available_devices, device_lease
from anon_tasks.orchestration.workers import worker_specs


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ANON_TASKS_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("ANON_TASKS_DEVICES", raising=False)
    monkeypatch.delenv("ANON_TASKS_DEVICE_SLOTS", raising=False)
    return tmp_path / "locks"


@pytest.mark.parametrize(
    ("env", "requested", "expected"),
    [
        ("cpu:0,cpu:1", "auto", ["cpu:0", "cpu:1"]),
        (" CUDA:0 , cuda:1 ", "auto", ["cuda:0", "cuda:1"]),
        ("cpu:0,cpu:1", "cpu", ["cpu"]),
        ("cpu:0,cpu:1", "cuda:3", ["cuda:3"]),
        ("", "auto", ["cpu"]),  # no GPU here: the CPU, one clear device
    ],
)
def test_available_devices(monkeypatch, env, requested, expected) -> None:
    if env:
        monkeypatch.setenv("ANON_TASKS_DEVICES", env)
    from anon_tasks.detection.runtime import cuda_unavailable_reason

    if not env and cuda_unavailable_reason() is None:
        pytest.skip("this host has CUDA: auto lists its GPUs")
    assert available_devices(requested) == expected


HOLDER = """
import sys, time
from anon_tasks.detection.devices import device_lease
with device_lease([sys.argv[1]]) as device:
    print("held", device, flush=True)
    time.sleep(120)
"""


def hold_in_child(device: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, device], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == f"held {device}"
    return child


def reap(child: subprocess.Popen) -> None:
    child.wait(timeout=10)
    if child.stdout is not None:
        child.stdout.close()


def test_leases_are_exclusive_across_processes_and_released_on_crash() -> None:
    child = hold_in_child("cpu:0")
    try:
        with device_lease(["cpu:0", "cpu:1"]) as device:
            assert device == "cpu:1"  # the busy device is skipped, not shared
        with pytest.raises(DeviceBusyError), device_lease(["cpu:0"], timeout_seconds=0.3):
            pass
    finally:
        child.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        reap(child)
    started = time.monotonic()
    with device_lease(["cpu:0"], timeout_seconds=5) as device:
        assert device == "cpu:0"
    assert time.monotonic() - started < 5


def test_a_waiting_run_gets_the_device_when_it_frees_up() -> None:
    child = hold_in_child("cpu:0")
    try:
        killer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import os,time,signal; time.sleep(0.5); os.kill({child.pid}, 9)",
            ]
        )
        with device_lease(["cpu:0"], timeout_seconds=10) as device:
            assert device == "cpu:0"
        killer.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        reap(child)


def test_lease_names_the_physical_gpu_behind_cuda_visible_devices(monkeypatch, lock_dir) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with device_lease(["cuda:0"]):
        assert (lock_dir / "cuda-3.lock").exists()


def test_device_slots_let_that_many_runs_share_a_device(monkeypatch) -> None:
    monkeypatch.setenv("ANON_TASKS_DEVICE_SLOTS", "2")
    first = hold_in_child("cpu:0")
    try:
        # A free device is preferred to a shared one...
        with device_lease(["cpu:0", "cpu:1"]) as device:
            assert device == "cpu:1"
        second = hold_in_child("cpu:0")  # ...but two runs may hold cpu:0 at once,
        try:
            with pytest.raises(DeviceBusyError), device_lease(["cpu:0"], timeout_seconds=0.3):
                pass  # and a third may not.
        finally:
            second.kill()
            reap(second)
    finally:
        first.kill()
        reap(first)


def test_busy_is_a_timeout_and_an_anon_tasks_error() -> None:
    from anon_tasks.core.errors import AnonTasksError

    assert issubclass(DeviceBusyError, TimeoutError)
    assert issubclass(DeviceBusyError, AnonTasksError)


WITHOUT_FILE_LOCKS = """
import sys, threading
sys.modules["fcntl"] = None  # as on Windows (and msvcrt as off Windows): neither imports
sys.modules["msvcrt"] = None
from anon_tasks.core.errors import DeviceBusyError
from anon_tasks.detection.devices import device_lease
with device_lease(["cpu:0"]) as device:
    assert device == "cpu:0"
    with device_lease(["cpu:0", "cpu:1"]) as other:
        assert other == "cpu:1"
    errors = []
    def contend():
        try:
            with device_lease(["cpu:0"], timeout_seconds=0.2):
                pass
        except DeviceBusyError as exc:
            errors.append(exc)
    thread = threading.Thread(target=contend)
    thread.start()
    thread.join()
    assert len(errors) == 1
with device_lease(["cpu:0"], timeout_seconds=1) as device:
    assert device == "cpu:0"
print("ok")
"""


def test_without_file_locks_the_package_imports_and_leases_exclude_within_the_process() -> None:
    """Where neither fcntl nor msvcrt exists, leases degrade to one process (with a warning)."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_FILE_LOCKS],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "device leases exclude the runs of one process only" in result.stderr


@pytest.mark.parametrize("value", ["0", "two", "-1", "65"])
def test_device_slots_refuse_nonsense(monkeypatch, value) -> None:
    from anon_tasks.core.errors import ConfigurationError

    monkeypatch.setenv("ANON_TASKS_DEVICE_SLOTS", value)
    with (
        pytest.raises(ConfigurationError, match="ANON_TASKS_DEVICE_SLOTS") as caught,
        device_lease(["cpu:0"]),
    ):
        pass
    assert caught.value.field == "ANON_TASKS_DEVICE_SLOTS"


def test_worker_specs_pin_one_gpu_each() -> None:
    specs = worker_specs(["0", "cuda:2", "cpu:1"], pool="anon-gpu", prefix="anon")
    assert [spec.device for spec in specs] == ["cuda:0", "cuda:2", "cpu:1"]
    assert specs[1].env == {
        "CUDA_VISIBLE_DEVICES": "2",
        "ANON_TASKS_DEVICES": "cuda:0",
        "ANON_TASKS_DEVICE_SLOTS": "1",
    }
    assert specs[2].env["ANON_TASKS_DEVICES"] == "cpu:1"
    assert len({spec.name for spec in specs}) == 3


def test_a_worker_taking_n_runs_lets_them_share_its_gpu() -> None:
    specs = worker_specs(["1"], pool="anon-gpu", prefix="anon", runs_per_device=4)
    assert specs[0].env["ANON_TASKS_DEVICE_SLOTS"] == "4"
    assert specs[0].env["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.usefixtures("prefect_api")
def test_shards_spread_over_every_device(monkeypatch, tmp_path, astronaut_rgb) -> None:
    from anon_tasks.core.settings import DetectionSettings, RunSettings
    from anon_tasks.flows import anonymize_dataset

    monkeypatch.setenv("ANON_TASKS_DEVICES", "cpu:0,cpu:1")
    source = tmp_path / "raw"
    source.mkdir()
    for index in range(4):
        Image.fromarray(np.roll(astronaut_rgb, 30 * index, axis=0)).save(source / f"{index}.png")
    summary = anonymize_dataset(
        str(source),
        str(tmp_path / "clean"),
        DetectionSettings(device="auto"),
        run=RunSettings(shard_size=1),
    )
    assert summary.images_inferred == 4
    assert summary.devices == ("cpu:0", "cpu:1")


def test_workers_on_a_host_without_a_gpu_serve_the_cpu(monkeypatch, caplog) -> None:
    """``anonymize-workers --pool anon-gpu`` pasted on a CPU host starts a CPU worker (and the
    pool), never exits before the guide's next step needs the pool."""
    import logging

    from anon_tasks.orchestration import workers

    monkeypatch.setattr(workers, "visible_gpus", lambda: [])
    with caplog.at_level(logging.WARNING, logger="anon_tasks.orchestration.workers"):
        assert workers.devices_to_serve("auto") == ["cpu:0"]
    assert "no GPU is visible" in caplog.text
    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    assert workers.devices_to_serve("auto") == ["0", "1"]
    assert workers.devices_to_serve("cpu:0, cpu:1") == ["cpu:0", "cpu:1"]
    assert workers.devices_to_serve(" , ") == []
    (spec,) = workers.worker_specs(["cpu:0"], pool="anon-gpu", prefix="anon")
    assert spec.env["ANON_TASKS_DEVICES"] == "cpu:0"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == ""
