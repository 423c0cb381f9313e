"""Writing the review: drawn from dest alone, paged, redrawn only when it would change."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from anon_tasks.core.records import ImageStatus
from anon_tasks.core.settings import MaskSettings
from anon_tasks.review import REVIEW_DIR, ReviewRequest, write_review
from anon_tasks.review.writer import PAGE_SIZE
from anon_tasks.storage.fingerprints import file_fingerprint
from tests.review.rows import FLOOR, THRESHOLD, row

BLUE, RED = (30, 60, 220), (230, 20, 20)


def _dataset(tmp_path: Path, count: int) -> tuple[Path, Path, list]:
    """Sources all red, their outputs in dest all blue, one row each."""
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    dest.mkdir()
    made = []
    for index in range(count):
        name = f"img-{index:03d}.png"
        cv2.imwrite(str(source / name), np.full((48, 64, 3), RED[::-1], np.uint8))
        cv2.imwrite(str(dest / name), np.full((48, 64, 3), BLUE[::-1], np.uint8))
        written = row(name, misses=(0.3,) if index % 3 == 0 else ())
        fingerprint = file_fingerprint(str(dest / name))
        made.append(written.model_copy(update={"output_fingerprint": fingerprint}))
    return source, dest, made


def _request(source: Path, dest: Path, limit: int = 600) -> ReviewRequest:
    return ReviewRequest(
        source=str(source),
        dest=str(dest),
        masking=MaskSettings(),
        threshold=THRESHOLD,
        score_floor=FLOOR,
        limit=limit,
        max_pixels=10**8,
    )


def _sheet_path(dest: Path, number: int = 1) -> Path:
    (path,) = (dest / REVIEW_DIR).glob(f"sheet-{number:04d}-*.png")
    return path


def _sheet(dest: Path, number: int = 1) -> np.ndarray:
    path = _sheet_path(dest, number)
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _names(dest: Path) -> list[str]:
    """The review folder's file names, each sheet's digest written as <digest>."""
    return sorted(
        re.sub(r"-[0-9a-f]{16}\.png$", "-<digest>.png", path.name)
        for path in (dest / REVIEW_DIR).iterdir()
    )


def test_the_review_shows_the_outputs_never_the_sources(tmp_path) -> None:
    source, dest, made = _dataset(tmp_path, 5)
    url = write_review(made, _request(source, dest))
    assert url == str(dest / REVIEW_DIR / "index.html")
    sheet = _sheet(dest).reshape(-1, 3).astype(int)
    assert (np.abs(sheet - BLUE).max(axis=1) < 8).sum() >= 5 * 48 * 64
    assert not (np.abs(sheet - RED).max(axis=1) < 60).any()
    # Without the source at all, the same pages.
    for path in source.iterdir():
        path.unlink()
    source.rmdir()
    first = _sheet_path(dest).read_bytes()
    (dest / REVIEW_DIR / "review.json").unlink()
    write_review(made, _request(source, dest))
    assert _sheet_path(dest).read_bytes() == first


@pytest.mark.parametrize("swap", ["link to the source", "rewritten", "gone"])
def test_an_output_that_is_not_as_written_is_not_shown(tmp_path, swap) -> None:
    """Whatever stands in dest now, the page shows only the files the run wrote."""
    source, dest, made = _dataset(tmp_path, 2)
    target = dest / "img-000.png"
    target.unlink()
    if swap == "link to the source":
        target.symlink_to(source / "img-000.png")
    elif swap == "rewritten":
        cv2.imwrite(str(target), np.full((48, 64, 3), RED[::-1], np.uint8))
    write_review(made, _request(source, dest))
    sheet = _sheet(dest).reshape(-1, 3).astype(int)
    assert not (np.abs(sheet - RED).max(axis=1) < 60).any()
    assert (np.abs(sheet - BLUE).max(axis=1) < 8).sum() >= 48 * 64  # the other output


def test_pages_hold_at_most_a_page_of_thumbnails_and_the_limit_bounds_them(tmp_path) -> None:
    source, dest, made = _dataset(tmp_path, PAGE_SIZE + 7)
    made.append(row("failed.png", status=ImageStatus.FAILED))
    write_review(made, _request(source, dest))
    review = dest / REVIEW_DIR
    assert _names(dest) == [
        "index.html", "page-0002.html", "review.json", "sheet-0001-<digest>.png",
        "sheet-0002-<digest>.png",
    ]  # fmt: skip
    assert (review / "index.html").read_text().count("<figure") == PAGE_SIZE
    assert (review / "page-0002.html").read_text().count("<figure") == 7
    record = json.loads((review / "review.json").read_text())
    assert (record["pages"], record["images_shown"], record["images_with_output"]) == (
        2,
        PAGE_SIZE + 7,
        PAGE_SIZE + 7,
    )
    # A lower limit: one page, and the second page's files are gone.
    write_review(made, _request(source, dest, limit=10))
    assert _names(dest) == ["index.html", "review.json", "sheet-0001-<digest>.png"]
    text = (review / "index.html").read_text()
    assert text.count("<figure") == 10
    assert f"{PAGE_SIZE + 7 - 10} more outputs are listed in the manifest only" in text


def test_an_unchanged_review_is_not_drawn_again(tmp_path) -> None:
    source, dest, made = _dataset(tmp_path, 4)
    write_review(made, _request(source, dest))
    sheet = _sheet_path(dest)
    os.utime(sheet, ns=(10**9, 10**9))  # a redraw would replace the file: none may happen
    write_review(made, _request(source, dest))
    assert sheet.stat().st_mtime_ns == 10**9
    changed = [made[0].model_copy(update={"near_misses": ()}), *made[1:]]
    write_review(changed, _request(source, dest))
    # A sheet of other tiles, by another name; the one touched above is left (it is not as
    # this tool wrote it), the page shows the new one.
    (drawn,) = {path.name for path in (dest / REVIEW_DIR).glob("sheet-0001-*.png")} - {sheet.name}
    assert f'src="{drawn}"' in (dest / REVIEW_DIR / "index.html").read_text()


def test_a_limit_of_zero_writes_no_review(tmp_path) -> None:
    source, dest, made = _dataset(tmp_path, 2)
    assert write_review(made, _request(source, dest, limit=0)) is None
    assert not (dest / REVIEW_DIR).exists()


@pytest.mark.parametrize("name", ["../manifest.jsonl", "../../img-000.png", "notes.txt"])
def test_a_forged_record_cannot_make_it_delete_other_files(tmp_path, name) -> None:
    source, dest, made = _dataset(tmp_path, 2)
    write_review(made, _request(source, dest))
    review = dest / REVIEW_DIR
    (review / "notes.txt").write_text("mine")
    (dest / "_anonymize" / "manifest.jsonl").write_text("{}")
    record = json.loads((review / "review.json").read_text())
    record["files"][name] = "anything"
    record["digest"] = "forged"
    (review / "review.json").write_text(json.dumps(record))
    write_review(made[:1], _request(source, dest))
    assert (review / "notes.txt").read_text() == "mine"
    assert (dest / "_anonymize" / "manifest.jsonl").exists()
    assert (dest / "img-000.png").exists()
