"""Every run writes its review page: near misses recorded, the page linked, reruns cheap."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.records import ManifestRow
from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings, RunSettings
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.flows import anonymize_dataset
from anon_tasks.orchestration.reporting import _report
from tests.conftest import shared_path

pytestmark = pytest.mark.usefixtures("prefect_api")

CPU = DetectionSettings(device="cpu")
REVIEW = Path("_anonymize/review")


@pytest.fixture
def people(tmp_path, astronaut_rgb, camera_gray) -> Path:
    source = tmp_path / "raw"
    source.mkdir()
    Image.fromarray(astronaut_rgb).save(source / "astronaut.jpg", quality=92)
    Image.fromarray(camera_gray).save(source / "camera.png")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(source / "empty.png")
    return source


def _rows(dest: Path) -> list[ManifestRow]:
    text = (dest / "_anonymize" / "manifest.jsonl").read_text()
    return [ManifestRow.model_validate_json(line) for line in text.splitlines()]


def test_a_run_writes_its_review_and_the_rerun_leaves_it(people, tmp_path) -> None:
    dest = tmp_path / "clean"
    summary = anonymize_dataset(str(people), str(dest), detection=CPU)
    assert summary.review == str(dest / REVIEW / "index.html")
    page = (dest / REVIEW / "index.html").read_text()
    rows = _rows(dest)
    for row in rows:
        assert f">{row.output}</span>" in page
        assert all(face.score <= 0.4 for face in row.near_misses)
        assert all(face.score > 0.4 for face in row.faces)
    assert page.count("<figure") == 3
    record = json.loads((dest / REVIEW / "review.json").read_text())
    masked = next(band for band in record["bands"] if band["masked"])
    assert masked["candidates"] == summary.faces_found >= 1
    (sheet,) = (dest / REVIEW).glob("sheet-0001-*.png")
    os.utime(sheet, ns=(10**9, 10**9))
    again = anonymize_dataset(str(people), str(dest), detection=CPU)
    assert (again.images_inferred, again.review) == (0, summary.review)
    assert sheet.stat().st_mtime_ns == 10**9  # nothing changed: not drawn again


def test_a_lower_threshold_moves_near_misses_into_the_masks_without_inference(
    people, tmp_path
) -> None:
    """The interview photo has candidates under 0.4 (0.32 as shipped)."""
    interview = shared_path(
        "wider-dev", "images", "13--Interview", "13_Interview_Interview_Sequences_13_134.jpg"
    )
    shutil.copyfile(interview, people / "interview.jpg")
    dest = tmp_path / "clean"
    anonymize_dataset(str(people), str(dest), detection=CPU)
    before = {row.source: row for row in _rows(dest)}
    misses = [face.score for row in before.values() for face in row.near_misses]
    assert misses, "the photos have candidates under the threshold"
    lower = max(0.11, min(misses) - 0.01)
    summary = anonymize_dataset(
        str(people), str(dest), detection=CPU.model_copy(update={"threshold": lower})
    )
    assert summary.images_inferred == 0
    after = {row.source: row for row in _rows(dest)}
    for source, row in after.items():
        was = before[source]
        assert {f.score for f in row.faces} == {
            f.score for f in (*was.faces, *was.near_misses) if f.score > lower
        }
    page = (dest / REVIEW / "index.html").read_text()
    assert f"threshold\n{lower:g}," in page


def test_no_review_when_switched_off_or_detecting_only(people, tmp_path) -> None:
    off = tmp_path / "off"
    summary = anonymize_dataset(
        str(people), str(off), detection=CPU, run=RunSettings(review_images=0)
    )
    assert summary.review is None
    assert not (off / REVIEW).exists()
    only = tmp_path / "only"
    summary = anonymize_dataset(
        str(people), str(only), detection=CPU, masking=MaskSettings(method=AnonymizeMethod.NONE)
    )
    assert summary.review is None
    assert not only.exists() or not (only / REVIEW).exists()


def test_the_report_links_the_review_page(tmp_path) -> None:
    from anon_tasks.core.records import RunSummary

    summary = RunSummary(source="raw", dest="clean", review="clean/_anonymize/review/index.html")
    render = RenderSpec.from_settings(DetectionSettings(), MaskSettings(), None, RunSettings())
    text = _report(summary, render)
    target = (Path("clean/_anonymize/review/index.html").resolve()).as_uri()
    assert f"]({target})" in text
