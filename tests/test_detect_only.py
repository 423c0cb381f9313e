"""Invariant 8: ``method none`` detects only.

It writes no image, leaves the manifest, the summary and the captions as they were, and never
replaces an output; the faces it found are in its summary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from anon_tasks import cli
from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings, RunSettings
from anon_tasks.flows import anonymize_dataset
from anon_tasks.pipeline.anonymizer import Anonymizer

pytestmark = pytest.mark.usefixtures("prefect_api")

CPU = DetectionSettings(device="cpu")
NONE = MaskSettings(method=AnonymizeMethod.NONE)


def snapshot(dest: Path) -> dict[str, str]:
    if not dest.exists():
        return {}
    return {
        p.relative_to(dest).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in dest.rglob("*")
        if p.is_file() and "cache" not in p.relative_to(dest).parts
    }


@pytest.fixture
def source(tmp_path, astronaut_rgb) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    Image.fromarray(astronaut_rgb).save(folder / "a.png")
    Image.fromarray(astronaut_rgb[::2, ::2].copy()).save(folder / "b.jpg", quality=90)
    (folder / "a.txt").write_text("an astronaut\n")
    return folder


def test_none_after_blur_changes_nothing_in_dest(source, tmp_path) -> None:
    dest = tmp_path / "clean"
    run = RunSettings(caption_note="faces are blurred")
    anonymize_dataset(str(source), str(dest), detection=CPU, run=run)
    before = snapshot(dest)
    assert {"a.png", "b.jpg", "a.txt", "_anonymize/manifest.jsonl"} <= set(before)
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, masking=NONE, run=run)
    assert summary.faces_found == 2
    assert summary.images_written == 0
    assert summary.manifest is None
    assert snapshot(dest) == before


def test_none_on_a_new_dest_writes_no_image(source, tmp_path) -> None:
    dest = tmp_path / "clean"
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, masking=NONE)
    assert summary.faces_found == 2
    assert snapshot(dest) == {}


def test_none_single_file_writes_nothing(source, tmp_path, capsys) -> None:
    out = tmp_path / "out.png"
    code = cli.main([str(source / "a.png"), str(out), "--method", "none", "--json"])
    assert code == 0
    assert '"faces_found": 1' in capsys.readouterr().out
    assert not out.exists()


def test_library_refuses_to_write_an_unmasked_copy(source, tmp_path) -> None:
    anonymizer = Anonymizer(detection=CPU, masking=NONE)
    with pytest.raises(ConfigurationError):
        anonymizer.anonymize_file(str(source / "a.png"), str(tmp_path / "copy.png"))
    assert not (tmp_path / "copy.png").exists()
