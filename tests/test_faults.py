"""Faults on a local dest: a flow process killed mid-run, and two runs writing one dest at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.settings import DetectionSettings, RunSettings

pytestmark = pytest.mark.usefixtures("prefect_api")

IMAGES = 12

RUNNER = """
import sys
from anon_tasks.flows import anonymize_dataset
from anon_tasks.core.settings import DetectionSettings, RunSettings
anonymize_dataset(sys.argv[1], sys.argv[2], DetectionSettings(device="cpu"),
                  run=RunSettings(shard_size=2, caption_note="faces are blurred"))
"""


@pytest.fixture
def dataset(tmp_path, astronaut_rgb) -> Path:
    source = tmp_path / "raw"
    for index in range(IMAGES):
        folder = source / f"part{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image = np.roll(astronaut_rgb, 37 * index, axis=1)
        Image.fromarray(image).save(folder / f"img{index:02d}.png")
        (folder / f"img{index:02d}.txt").write_text(f"photo {index}")
    return source


def child_env() -> dict[str, str]:
    import prefect.settings as prefect_settings

    return {
        **os.environ,
        "PREFECT_API_URL": str(prefect_settings.PREFECT_API_URL.value()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def run_here(source: Path, dest: Path):
    from anon_tasks.flows import anonymize_dataset

    return anonymize_dataset(
        str(source),
        str(dest),
        DetectionSettings(device="cpu"),
        run=RunSettings(shard_size=2, caption_note="faces are blurred"),
    )


def dataset_files(root: Path) -> dict[str, bytes]:
    """What a dataset reader sees: every file outside _anonymize, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "_anonymize" not in p.relative_to(root).parts
    }


def manifest_rows(root: Path) -> dict[str, dict]:
    rows = {}
    for line in (root / "_anonymize" / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        for volatile in ("status", "output_fingerprint", "listed_at_ns"):
            row.pop(volatile)
        row["sidecars"] = sorted(row["sidecars"])  # their fingerprints differ, like the output's
        rows[row["source"]] = row
    return rows


def test_killed_mid_run_then_rerun_equals_a_clean_run(dataset, tmp_path) -> None:
    dest = tmp_path / "dest"
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(dataset), str(dest)],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if len(list(dest.rglob("*.png"))) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run finished before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    written_before = len(list(dest.rglob("*.png")))
    assert 3 <= written_before < IMAGES
    assert not (dest / "_anonymize" / "manifest.jsonl").exists()

    rerun = run_here(dataset, dest)
    assert rerun.images_written + rerun.images_unchanged == IMAGES
    clean_dest = tmp_path / "clean"
    run_here(dataset, clean_dest)
    assert dataset_files(dest) == dataset_files(clean_dest)
    assert manifest_rows(dest) == manifest_rows(clean_dest)
    assert not [p for p in dest.rglob(".anon-tmp-*") if "_anonymize" not in p.parts]


def test_two_runs_on_one_dest_at_once(dataset, tmp_path) -> None:
    dest = tmp_path / "dest"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(dataset), str(dest)],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        _, stderr = child.communicate(timeout=240)
        assert child.returncode == 0, stderr[-2000:]
    clean_dest = tmp_path / "clean"
    run_here(dataset, clean_dest)
    assert dataset_files(dest) == dataset_files(clean_dest)  # complete and consistent
    assert manifest_rows(dest) == manifest_rows(clean_dest)
    for path in dest.rglob("*.png"):
        with Image.open(path) as image:
            image.load()
