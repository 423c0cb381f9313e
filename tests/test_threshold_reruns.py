"""A threshold rerun renders again only the images whose masks change.

The invariant: an output is kept at a new threshold only when that threshold masks exactly the
faces the output has masked (``planning.masks_hold``), judged from its manifest row, whose
scores are rounded. Tested here for any candidates and thresholds (a kept output never lacks a
mask the new threshold asks for), and end to end: the rerun's files are byte for byte a fresh
run's at the new threshold, and the outputs it kept were not written again.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.faces import Face, faces_above, near_misses
from anon_tasks.core.records import ImageStatus, ManifestRow
from anon_tasks.core.settings import DetectionSettings
from anon_tasks.datasets.planning import SCORE_ROUNDING, masks_hold
from anon_tasks.datasets.rows import manifest_faces
from anon_tasks.detection.detector import detection_floor
from anon_tasks.flows import anonymize_dataset
from tests.conftest import shared_path

CPU = DetectionSettings(device="cpu")
_scores = st.floats(0.0, 1.0, allow_nan=False)
_thresholds = st.floats(0.0, 1.0, allow_nan=False) | st.sampled_from([0.1, 0.3, 0.4, 0.5])


def _row_at(candidates: list[float], threshold: float) -> ManifestRow:
    """The row a run at ``threshold`` writes for an image whose detector scores are
    ``candidates`` (all of them: those under the floor are never kept)."""
    floor = detection_floor(threshold)
    kept = [Face(xyxy=(i, i, i + 10.0, i + 10.0), score=s) for i, s in enumerate(candidates)]
    kept = [face for face in kept if face.score > floor]
    return ManifestRow(
        source="a.jpg",
        output="a.jpg",
        status=ImageStatus.WRITTEN,
        faces=manifest_faces(faces_above(kept, threshold)),
        near_misses=manifest_faces(near_misses(kept, threshold)),
        score_floor=floor,
        source_fingerprint="f",
        model_sha256="0",
        package_version="0",
    )


@settings(max_examples=500, deadline=None)
@given(st.lists(_scores, max_size=8), _thresholds, _thresholds)
def test_an_output_kept_at_a_new_threshold_has_every_mask_it_asks_for(
    candidates: list[float], before: float, after: float
) -> None:
    if masks_hold(_row_at(candidates, before), after):
        assert {s for s in candidates if s > after} == {s for s in candidates if s > before}


@settings(max_examples=300, deadline=None)
@given(st.lists(_scores, max_size=8), _thresholds, _thresholds)
def test_an_output_whose_faces_are_clear_of_both_thresholds_is_kept(
    candidates: list[float], before: float, after: float
) -> None:
    """Not only safe but useful: the work is skipped unless a candidate is near the line."""
    low, high = sorted((before, after))
    near = any(low - 2 * SCORE_ROUNDING <= s <= high + 2 * SCORE_ROUNDING for s in candidates)
    if not near and detection_floor(before) <= after:
        assert masks_hold(_row_at(candidates, before), after)


def test_a_row_without_a_floor_never_holds() -> None:
    """Rows written before floors were recorded may lack near misses: rendered again."""
    row = _row_at([0.9], 0.4).model_copy(update={"score_floor": None})
    assert not masks_hold(row, 0.4)


def _files(dest: Path) -> dict[str, str]:
    return {
        path.relative_to(dest).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in dest.rglob("*")
        if path.is_file() and "_anonymize" not in path.parts
    }


def _rows(dest: Path) -> dict[str, ManifestRow]:
    text = (dest / "_anonymize" / "manifest.jsonl").read_text()
    rows = (ManifestRow.model_validate_json(line) for line in text.splitlines())
    return {row.source: row for row in rows}


@pytest.mark.usefixtures("prefect_api")
def test_a_lower_threshold_renders_only_the_images_it_masks_more_of(
    tmp_path, astronaut_rgb
) -> None:
    source = tmp_path / "raw"
    source.mkdir()
    Image.fromarray(astronaut_rgb).save(source / "astronaut.jpg", quality=92)
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(source / "empty.png")
    interview = "13--Interview/13_Interview_Interview_Sequences_13_134.jpg"
    shutil.copyfile(shared_path("wider-dev", "images", *interview.split("/")), source / "i.jpg")
    dest = tmp_path / "clean"
    anonymize_dataset(str(source), str(dest), CPU)
    before = _rows(dest)
    stats = {name: (dest / name).stat() for name in before}
    misses = sorted(face.score for face in before["i.jpg"].near_misses)
    assert misses, "the interview photo has candidates under the threshold (0.32 as shipped)"
    lower = misses[-1] - 0.005  # its best near miss is masked now
    scores = [f.score for row in before.values() for f in (*row.faces, *row.near_misses)]
    assert all(abs(score - lower) > 2 * SCORE_ROUNDING for score in scores)
    more = {
        name for name, row in before.items() if any(face.score > lower for face in row.near_misses)
    }
    assert "i.jpg" in more
    assert len(more) < len(before)  # some images keep their masks: the case this is about

    lowered = CPU.model_copy(update={"threshold": lower})
    summary = anonymize_dataset(str(source), str(dest), lowered)
    assert (summary.images_inferred, summary.images_written) == (0, len(more))
    assert summary.images_unchanged == len(before) - len(more)
    after = _rows(dest)
    for name, row in after.items():
        kept = (dest / name).stat()
        if name in more:
            assert row.status is ImageStatus.WRITTEN
            assert len(row.faces) > len(before[name].faces)
        else:  # the same file, not written again, now recorded at the new threshold
            assert row.status is ImageStatus.UNCHANGED
            assert (kept.st_ino, kept.st_mtime_ns) == (stats[name].st_ino, stats[name].st_mtime_ns)
            assert row.faces == before[name].faces
        assert row.parameters["threshold"] == lower

    fresh = tmp_path / "fresh"
    anonymize_dataset(str(source), str(fresh), lowered)
    assert _files(dest) == _files(fresh)
    assert {name: row.faces for name, row in after.items()} == {
        name: row.faces for name, row in _rows(fresh).items()
    }
