"""Hostile input through the flow: the awkward corpus in one run, escaping paths, bad parameters."""

from __future__ import annotations

import io
import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.errors import ConfigurationError, UnsafePathError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import DetectionSettings, MaskSettings, RunSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.masking import masked_pixels
from anon_tasks.storage.locations import join_url, safe_relative_path
from tests.conftest import shared_path
from tests.test_anonymizer import assert_faces_destroyed, assert_masked_and_untouched_elsewhere

pytestmark = pytest.mark.usefixtures("prefect_api")

#: Files of the awkward corpus that must be refused, and a word their reason contains.
REFUSED = {
    "broken.png": "not an image",
    "broken_data_stream.png": "",
    "truncated_image.png": "",
    "truncated_jpeg.jpg": "",
    "png_decompression_dos.png": "",
    "decompression_bomb.gif": "pixels",
}


def test_the_whole_awkward_corpus_in_one_run(tmp_path) -> None:
    from anon_tasks.flows import anonymize_dataset

    source = shared_path("awkward")
    dest = tmp_path / "clean"
    summary = anonymize_dataset(
        str(source),
        str(dest),
        DetectionSettings(device="cpu"),
        run=RunSettings(allow_failures=True, shard_size=8),
    )
    files = sorted(p.name for p in source.iterdir())
    assert summary.images_total == len(files)
    assert sorted(summary.failed_images) == sorted(REFUSED)
    assert summary.images_written == len(files) - len(REFUSED)  # the run finished the rest
    rows = {
        json.loads(line)["source"]: json.loads(line)
        for line in (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    }
    assert sorted(rows) == files
    for name, row in rows.items():
        if name in REFUSED:
            assert row["status"] == "failed"
            assert row["output"] is None
            assert REFUSED[name] in row["error"]
            assert not (dest / name).exists()
            continue
        before = decode_image((source / name).read_bytes(), source=name)
        after = decode_image((dest / name).read_bytes(), source=name)
        assert after.format == before.format
        assert len(after.frames) == len(before.frames)  # every frame of MPO and animations
        for index, (old, new) in enumerate(zip(before.frames, after.frames, strict=True)):
            assert new.shape == old.shape  # upright, alpha and gray kept
            assert new.dtype == old.dtype  # bit depth kept
            faces = [
                Face(xyxy=tuple(face["box"]), score=face["score"], frame=face["frame"])
                for face in row["faces"]
                if face["frame"] == index
            ]
            assert_faces_destroyed(old, new, faces)
            if faces:  # (a face-free lossy AVIF of 64 px moves more than 3 levels on re-encode)
                assert_masked_and_untouched_elsewhere(old, new, faces)
            if old.ndim == 3 and old.shape[2] in (2, 4):  # alpha kept outside the masks
                covered = masked_pixels(*old.shape[:2], faces, MaskSettings())
                # The manifest rounds boxes to 0.01 px: a pixel's margin around the masks.
                covered = cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
                np.testing.assert_array_equal(new[..., -1][~covered], old[..., -1][~covered])


@pytest.mark.parametrize(
    "relative",
    ["../x.jpg", "a/../../x.jpg", "/etc/x.jpg", "a//b.jpg", "a\\b.jpg", "./a.jpg", ""],
)
def test_escaping_paths_are_refused(relative: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(relative)
    with pytest.raises(UnsafePathError):
        join_url("/data/out", relative)


def test_object_keys_with_dot_dot_cannot_write_outside_dest(tmp_path, astronaut_rgb) -> None:
    """An object store may hold keys with '..'; such an image is failed, nothing escapes."""
    import fsspec

    from anon_tasks.flows import anonymize_dataset

    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format="PNG")
    memory = fsspec.filesystem("memory")
    memory.pipe("/hostile/ok.png", buffer.getvalue())
    memory.pipe("/hostile/sub/../../escape.png", buffer.getvalue())
    dest = tmp_path / "out" / "clean"
    summary = anonymize_dataset(
        "memory://hostile",
        str(dest),
        DetectionSettings(device="cpu"),
        run=RunSettings(allow_failures=True),
    )
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    # The image, and the review page's contact sheet in the tool's own folder; nothing else.
    sheet, image = written
    assert image == "out/clean/ok.png"
    assert re.fullmatch(r"out/clean/_anonymize/review/sheet-0001-[0-9a-f]{16}\.png", sheet)
    assert summary.images_written == 1
    assert summary.images_failed == len(summary.failed_images) == summary.images_total - 1


@pytest.mark.parametrize(
    "parameters",
    [
        {"detection": {"threshold": 1.5}},
        {"detection": {"threshold": -0.1}},
        {"masking": {"method": "pixelate"}},
        {"masking": {"mask_scale": 0}},
        {"masking": {"mask_scale": -1}},
        {"masking": {"mosaic_size": 0}},
        {"run": {"shard_size": 0}},
        {"run": {"storage_options": {"aws_secret_access_key": "x"}}},
    ],
)
def test_bad_parameters_fail_before_any_work(tmp_path, parameters) -> None:
    from prefect.exceptions import ParameterTypeError

    from anon_tasks.flows import anonymize_dataset

    source = tmp_path / "raw"
    source.mkdir()
    dest = tmp_path / "clean"
    field = next(iter(next(iter(parameters.values()))))
    with pytest.raises(ParameterTypeError, match=field):
        anonymize_dataset(str(source), str(dest), **parameters)
    assert not dest.exists()


def test_dest_equal_to_source_fails_before_any_work(tmp_path) -> None:
    from anon_tasks.flows import anonymize_dataset

    source = tmp_path / "raw"
    source.mkdir()
    with pytest.raises(ConfigurationError, match="dest="):
        anonymize_dataset(str(source), str(source))
    assert list(source.iterdir()) == []
