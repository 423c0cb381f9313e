"""A rerun's review copies the tiles it drew before: it draws only what changed, and its pages
and sheets are those a review drawn from scratch would have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anon_tasks.core.records import ManifestRow
from anon_tasks.core.settings import MaskSettings
from anon_tasks.review import REVIEW_DIR, ReviewRequest, write_review
from anon_tasks.review.writer import PAGE_SIZE
from anon_tasks.storage.fingerprints import file_fingerprint
from tests.review.rows import FLOOR, THRESHOLD, row

RED = (230, 20, 20)


def _colour(index: int, version: int = 0) -> tuple[int, int, int]:
    """A colour of its own for each output (and each rewrite of it), never near red."""
    return (40 + (index * 53 + version * 101) % 150, 60 + (index * 29) % 160, 200)


def _write_output(dest: Path, name: str, colour: tuple[int, int, int]) -> str:
    cv2.imwrite(str(dest / name), np.full((48, 64, 3), colour[::-1], np.uint8))
    return file_fingerprint(str(dest / name))


def _dataset(folder: Path, count: int) -> tuple[Path, list[ManifestRow]]:
    dest = folder / "clean"
    dest.mkdir(parents=True)
    made = []
    for index in range(count):
        name = f"img-{index:03d}.png"
        fingerprint = _write_output(dest, name, _colour(index))
        misses = (0.2 + 0.01 * index,) if index % 3 == 0 else ()
        made.append(row(name, misses=misses).model_copy(update={"output_fingerprint": fingerprint}))
    return dest, made


def _request(dest: Path) -> ReviewRequest:
    return ReviewRequest(
        source=str(dest.parent / "raw"),
        dest=str(dest),
        masking=MaskSettings(),
        threshold=THRESHOLD,
        score_floor=FLOOR,
        limit=600,
        max_pixels=10**8,
    )


def _review(rows: list[ManifestRow], dest: Path) -> tuple[int, int, int] | None:
    """Writes the review; how many thumbnails it drew, copied and kept on unchanged sheets
    (None when the rows and the page are those of the review already there: nothing drawn)."""
    record_path = dest / REVIEW_DIR / "review.json"
    before = json.loads(record_path.read_text())["digest"] if record_path.exists() else None
    write_review(rows, _request(dest))
    record = json.loads(record_path.read_text())
    if record["digest"] == before:
        return None
    made = record["thumbnails"]
    return made["drawn"], made["copied"], made["kept"]


def _pages(dest: Path) -> dict[str, object]:
    """Every page's text and every sheet's pixels, by file name."""
    shown: dict[str, object] = {}
    for path in sorted((dest / REVIEW_DIR).iterdir()):
        if path.suffix == ".html":
            shown[path.name] = path.read_text()
        elif path.suffix == ".png":
            shown[path.name] = cv2.imread(str(path), cv2.IMREAD_COLOR).tobytes()
    return shown


def _fresh(rows: list[ManifestRow], dest: Path) -> dict[str, object]:
    """The pages a review drawn from scratch shows for ``rows``."""
    shutil.rmtree(dest / REVIEW_DIR)
    counts = _review(rows, dest)
    assert counts is not None
    _drawn, copied, kept = counts
    assert copied == kept == 0
    return _pages(dest)


_change = st.tuples(
    st.integers(0, 11), st.sampled_from(["near misses", "rewritten", "dropped", "gone"])
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(1, 12), changes=st.lists(_change, max_size=5))
def test_a_rerun_draws_only_what_changed_and_equals_a_fresh_review(
    tmp_path_factory, count, changes
) -> None:
    dest, made = _dataset(tmp_path_factory.mktemp("review"), count)
    _review(made, dest)
    first = _pages(dest)
    rows = {each.output: each for each in made}
    rewrites = 0
    for index, change in changes:
        name = f"img-{index % count:03d}.png"
        if name not in rows:
            continue
        if change == "near misses":
            misses = () if rows[name].near_misses else (0.35,)
            rows[name] = row(name, misses=misses).model_copy(
                update={"output_fingerprint": rows[name].output_fingerprint}
            )
        elif change == "rewritten":
            rewrites += 1
            fingerprint = _write_output(dest, name, _colour(index, version=rewrites))
            rows[name] = rows[name].model_copy(update={"output_fingerprint": fingerprint})
        elif change == "dropped":
            del rows[name]
        else:  # gone from dest, still in the manifest: a grey tile
            (dest / name).unlink(missing_ok=True)
    changed = list(rows.values())
    counts = _review(changed, dest)
    if counts is None:  # the same rows: the page stays as drawn, whatever dest holds now
        assert changed == made
        assert _pages(dest) == first
        return
    drawn, copied, kept = counts
    before = {each.output: each for each in made}
    present = [name for name in rows if (dest / name).exists()]
    # Every tile drawn before of an output still as written is copied (or kept on its sheet);
    # every other one is drawn, once.
    assert copied + kept == sum(rows[name] == before[name] for name in present)
    assert drawn == sum(rows[name] != before[name] for name in present)
    assert _pages(dest) == _fresh(changed, dest)


def test_an_unchanged_page_keeps_its_sheet_while_another_is_drawn(tmp_path) -> None:
    dest, made = _dataset(tmp_path, PAGE_SIZE + 5)
    made = [each.model_copy(update={"near_misses": ()}) for each in made]  # ordered by name
    _review(made, dest)
    (first,) = (dest / REVIEW_DIR).glob("sheet-0001-*.png")
    before = first.stat()
    last = made[-1].output
    fingerprint = _write_output(dest, last, _colour(0, version=7))
    changed = [*made[:-1], made[-1].model_copy(update={"output_fingerprint": fingerprint})]
    assert _review(changed, dest) == (1, 4, PAGE_SIZE)
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _pages(dest) == _fresh(changed, dest)


def test_a_sheet_that_is_not_as_written_is_not_copied_from(tmp_path) -> None:
    dest, made = _dataset(tmp_path, 6)
    _review(made, dest)
    (sheet,) = (dest / REVIEW_DIR).glob("sheet-0001-*.png")
    height, width = cv2.imread(str(sheet)).shape[:2]
    cv2.imwrite(str(sheet), np.full((height, width, 3), RED[::-1], np.uint8))
    changed = [made[0].model_copy(update={"near_misses": ()}), *made[1:]]
    assert _review(changed, dest) == (6, 0, 0)
    (drawn,) = set((dest / REVIEW_DIR).glob("sheet-0001-*.png")) - {sheet}
    pixels = cv2.cvtColor(cv2.imread(str(drawn)), cv2.COLOR_BGR2RGB).reshape(-1, 3).astype(int)
    assert not (np.abs(pixels - RED).max(axis=1) < 60).any()


def test_a_forged_record_reads_nothing_outside_the_review(tmp_path) -> None:
    dest, made = _dataset(tmp_path, 3)
    _review(made, dest)
    record_path = dest / REVIEW_DIR / "review.json"
    record = json.loads(record_path.read_text())
    keys = next(iter(record["sheets"].values()))
    outside = dest / "img-000.png"
    for name in ("../../img-000.png", "sheet-0009.png", "sheet-0009-0000000000000000.png"):
        record["sheets"] = {name: keys}
        record["files"] = {name: file_fingerprint(str(outside))}
        record["digest"] = "forged"
        record_path.write_text(json.dumps(record))
        changed = [made[0].model_copy(update={"near_misses": ()}), *made[1:]]
        assert _review(changed, dest) == (3, 0, 0), name
