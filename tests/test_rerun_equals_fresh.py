"""Invariant 9 end to end: after any change of settings, a rerun's outputs equal a fresh run's.

Whatever the previous run left in dest (outputs, manifest, cached detections), the files a
rerun leaves are byte for byte those of a run into an empty dest with the new settings. A
setting missing from a key shows up here as a stale output.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prefect import flow

from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    Quality,
    RunSettings,
)
from anon_tasks.flows import anonymize_dataset

pytestmark = pytest.mark.usefixtures("prefect_api")


def outputs(dest: Path) -> dict[str, str]:
    return {
        p.relative_to(dest).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in dest.rglob("*")
        if p.is_file() and "_anonymize" not in p.parts
    }


settings_strategy = st.fixed_dictionaries(
    {
        "threshold": st.sampled_from([0.3, 0.4, 0.6]),
        "quality": st.sampled_from(list(Quality)),
        "method": st.sampled_from(
            [AnonymizeMethod.BLUR, AnonymizeMethod.SOLID, AnonymizeMethod.MOSAIC]
        ),
        "mask_scale": st.sampled_from([1.0, 1.3]),
        "jpeg_quality": st.sampled_from([90, 95]),
        "caption_note": st.sampled_from([None, "faces are hidden"]),
    }
)


def _run(source: Path, dest: Path, chosen: dict) -> None:
    anonymize_dataset(
        str(source),
        str(dest),
        DetectionSettings(device="cpu", threshold=chosen["threshold"], quality=chosen["quality"]),
        MaskSettings(method=chosen["method"], mask_scale=chosen["mask_scale"]),
        OutputSettings(jpeg_quality=chosen["jpeg_quality"]),
        RunSettings(caption_note=chosen["caption_note"]),
    )


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from skimage import data

    source = tmp_path_factory.mktemp("fresh") / "raw"
    source.mkdir()
    face = data.astronaut()[::2, ::2]
    Image.fromarray(face).save(source / "a.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(face[:, ::-1])).save(source / "b.png")
    (source / "a.txt").write_text("an astronaut\n")
    return source


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=settings_strategy, second=settings_strategy)
def test_rerun_with_changed_settings_equals_a_fresh_run(
    tmp_path_factory, small_dataset, first, second
) -> None:
    root = tmp_path_factory.mktemp("rerun")
    _run(small_dataset, root / "rerun", first)
    _run(small_dataset, root / "rerun", second)
    _run(small_dataset, root / "fresh", second)
    assert outputs(root / "rerun") == outputs(root / "fresh")


def test_masking_never_creates_a_model_session(small_dataset, tmp_path, monkeypatch) -> None:
    """Masking reads detections; only a file that changed since detection runs the model."""
    from anon_tasks.datasets.keys import RenderSpec
    from anon_tasks.orchestration.detection_task import detect_faces
    from anon_tasks.orchestration.listing_tasks import scan_source
    from anon_tasks.orchestration.masking_task import mask_faces
    from anon_tasks.pipeline import leases

    @flow
    def detect_then_mask(raising: bool) -> int:
        listing = scan_source(str(small_dataset))
        found = detect_faces(listing.images, str(small_dataset), DetectionSettings())
        if raising:

            def refuse(*args, **kwargs):
                raise AssertionError("mask_faces created a detector")

            monkeypatch.setattr(leases, "CenterFaceDetector", refuse)
            monkeypatch.setattr(leases, "_detectors", {})
        render = RenderSpec.from_settings()
        masked = mask_faces(found, str(small_dataset), str(tmp_path / "out"), render)
        return sum(1 for image in masked.images if image.status.value == "written")

    assert detect_then_mask(raising=True) == 2
