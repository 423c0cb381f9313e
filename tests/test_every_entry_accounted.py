"""Invariants 6 and 10 through the flow: one bad entry never stops or hangs a run, images are
decided by content, and everything not processed is in the manifest with a reason."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from anon_tasks.core.settings import DetectionSettings, RunSettings
from anon_tasks.flows import anonymize_dataset

pytestmark = pytest.mark.usefixtures("prefect_api")

CPU = DetectionSettings(device="cpu")


def manifest(dest: Path) -> dict[str, dict]:
    lines = (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    return {row["source"]: row for row in map(json.loads, lines)}


@pytest.fixture
def hostile(tmp_path, astronaut_rgb) -> Path:
    source = tmp_path / "raw"
    source.mkdir()
    small = astronaut_rgb[::2, ::2].copy()
    Image.fromarray(small).save(source / "plain.jpg", quality=90)
    Image.fromarray(small).save(source / "camera.jfif", format="JPEG", quality=90)
    Image.fromarray(small).save(source / "scan.bmp")
    Image.fromarray(small).save(source / "IMG_0001", format="JPEG", quality=90)  # no extension
    Image.fromarray(small).save(source / "a:b.jpg", quality=90)  # a legal POSIX name
    (source / "table.csv").write_text("a,b\n1,2\n")
    os.mkfifo(source / "pipe.jpg")
    (source / "loop.jpg").symlink_to(source / "loop.jpg")
    (source / "dangling.png").symlink_to(source / "missing.png")
    os.close(os.open(os.fsencode(source) + b"/bad-\xff-name.jpg", os.O_CREAT | os.O_WRONLY))
    return source


def test_hostile_entries_are_recorded_and_the_run_finishes(hostile, tmp_path) -> None:
    dest = tmp_path / "clean"
    result: dict = {}

    def run() -> None:
        result["summary"] = anonymize_dataset(
            str(hostile), str(dest), detection=CPU, run=RunSettings(allow_failures=True)
        )

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the run hung (a FIFO opened?)"
    summary = result["summary"]
    rows = manifest(dest)
    written = {name for name, row in rows.items() if row["status"] == "written"}
    assert written == {"plain.jpg", "camera.jfif", "scan.bmp", "IMG_0001", "a:b.jpg"}
    skipped = {name: row for name, row in rows.items() if row["status"] == "skipped"}
    assert {"table.csv", "pipe.jpg", "loop.jpg", "dangling.png"} <= set(skipped)
    assert any("\\xff" in name for name in skipped)
    assert all(row["error"] for row in skipped.values())
    assert summary.images_skipped == len(skipped)
    assert summary.images_written == 5
    for name in written:
        assert (dest / name).is_file()
    with Image.open(dest / "scan.bmp") as bmp, Image.open(dest / "camera.jfif") as jfif:
        assert (bmp.format, jfif.format) == ("BMP", "JPEG")


def test_refused_sidecars_and_a_reserved_folder_are_said_and_stop_nothing(
    tmp_path, astronaut_rgb
) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    (source / "_anonymize").mkdir(parents=True)
    small = astronaut_rgb[::2, ::2].copy()
    Image.fromarray(small).save(source / "a.jpg", quality=90)
    (source / "a.txt").write_bytes(b"caption\x01 with a control character\n")
    Image.fromarray(small).save(source / "_anonymize" / "face.jpg", quality=90)
    summary = anonymize_dataset(
        str(source), str(dest), detection=CPU, run=RunSettings(caption_note="faces are blurred")
    )
    rows = manifest(dest)
    assert rows["a.jpg"]["status"] == "written"
    assert rows["a.jpg"]["refused_sidecars"][0].startswith("a.txt: ")
    assert not (dest / "a.txt").exists()
    assert rows["_anonymize/face.jpg"]["status"] == "skipped"
    assert not (dest / "_anonymize" / "face.jpg").exists()
    assert summary.images_skipped == 1
