"""Invariant 1: the pixels written are masked with the detections of those very pixels.

Detections carry the SHA-256 of the bytes they were computed on; masking refuses other bytes
(it finds the faces again), a replaced file gets a new fingerprint even when size and mtime are
restored, and a fingerprint taken in the same clock tick as a change is never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prefect import flow

from anon_tasks.core.records import ImageRef, ImageStatus, ManifestRow
from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.planning import RACY_WINDOW_NS, is_racy, is_up_to_date
from anon_tasks.flows import anonymize_dataset
from anon_tasks.orchestration.detection_task import detect_faces
from anon_tasks.orchestration.listing_tasks import scan_source
from anon_tasks.orchestration.masking_task import MaskedImage, MaskedShard, mask_faces
from anon_tasks.orchestration.writing_tasks import write_images
from anon_tasks.storage.fingerprints import local_fingerprint
from tests.faces import ASTRONAUT_FACE_XYXY, MIRRORED_FACE_XYXY, face_hidden, face_visible

pytestmark = pytest.mark.usefixtures("prefect_api")

CPU = DetectionSettings(device="cpu")


def _tiff(pixels: np.ndarray) -> bytes:
    """Uncompressed TIFF: two photos of one size have exactly the same byte count."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    return buffer.getvalue()


def _manifest(dest: Path) -> dict[str, dict]:
    lines = (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    return {row["source"]: row for row in map(json.loads, lines)}


def test_file_replaced_between_detection_and_masking_is_detected_again(
    tmp_path, astronaut_rgb
) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    target = source / "person.tif"
    target.write_bytes(_tiff(astronaut_rgb))
    mirrored = np.ascontiguousarray(astronaut_rgb[:, ::-1])
    replacement = _tiff(mirrored)

    @flow
    def replaced_mid_run() -> tuple[int, list[ManifestRow]]:
        listing = scan_source(str(source))
        found = detect_faces(listing.images, str(source), detection=CPU)
        target.write_bytes(replacement)  # another photo, faces elsewhere
        # No decoded-image cache: masking reads the file again (as when a 43 MP photo
        # overflows the run's cache).
        render = RenderSpec.from_settings(detection=CPU)
        masked = mask_faces(found, str(source), str(dest), render)
        rows = write_images(masked, str(source), str(dest), render)
        return masked.images_redetected, rows

    redetected, rows = replaced_mid_run()
    assert redetected == 1
    assert rows[0].status is ImageStatus.WRITTEN
    assert rows[0].source_sha256 == hashlib.sha256(replacement).hexdigest()
    output = np.asarray(Image.open(dest / "person.tif").convert("RGB"))
    assert face_hidden(mirrored, output, MIRRORED_FACE_XYXY)
    assert face_visible(mirrored, output, ASTRONAUT_FACE_XYXY)  # the old box is not used


def test_detections_kept_for_a_higher_threshold_are_never_used_for_a_lower_one(
    tmp_path, astronaut_rgb
) -> None:
    """A user's flow that detects at one threshold and masks at a lower one (below the floor
    the detections were kept to) gets its faces found again, not fewer faces masked."""
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    (source / "person.tif").write_bytes(_tiff(astronaut_rgb))

    @flow
    def detect_then_mask(mask_threshold: float) -> tuple[float, int, int]:
        listing = scan_source(str(source))
        found = detect_faces(listing.images, str(source), detection=CPU)  # floor 0.1
        lower = CPU.model_copy(update={"threshold": mask_threshold})
        render = RenderSpec.from_settings(detection=lower)
        masked = mask_faces(found, str(source), str(dest / str(mask_threshold)), render)
        written = masked.images[0]
        return found.images[0].score_floor, masked.images_redetected, len(written.faces)

    floor, redetected, faces = detect_then_mask(0.05)
    assert floor == 0.1
    assert redetected == 1
    assert faces >= 1
    assert detect_then_mask(0.3)[1] == 0  # detections down to 0.1 serve 0.3: no model run


@pytest.mark.parametrize("method", [AnonymizeMethod.MOSAIC, AnonymizeMethod.BLUR])
def test_copy_with_preserved_size_and_mtime_is_not_kept_as_unchanged(
    tmp_path, astronaut_rgb, method
) -> None:
    """What ``cp -p``, tar and rsync restores do: same size, same mtime, other content."""
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    target = source / "person.tif"
    target.write_bytes(_tiff(astronaut_rgb))
    first = anonymize_dataset(str(source), str(dest), detection=CPU)
    assert first.images_written == 1
    before = target.stat()
    mirrored = np.ascontiguousarray(astronaut_rgb[:, ::-1])
    staged = tmp_path / "staged.tif"
    staged.write_bytes(_tiff(mirrored))
    shutil.copy2(staged, target)  # cp -p
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    second = anonymize_dataset(
        str(source), str(dest), detection=CPU, masking=MaskSettings(method=method)
    )
    assert second.images_unchanged == 0
    assert second.images_written == 1
    assert second.images_inferred == 1
    row = _manifest(dest)["person.tif"]
    assert row["source_sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    output = np.asarray(Image.open(dest / "person.tif").convert("RGB"))
    assert face_hidden(mirrored, output, MIRRORED_FACE_XYXY)


def test_rerun_of_an_unchanged_dataset_reads_no_image_bytes(
    tmp_path, astronaut_rgb, monkeypatch
) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    (source / "sub").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(np.roll(astronaut_rgb, 40 * index, axis=1)).save(
            source / "sub" / f"{index}.png"
        )
    first = anonymize_dataset(str(source), str(dest), detection=CPU)
    assert first.images_written == 3
    rows = _manifest(dest)
    for name, row in rows.items():
        assert row["source_sha256"] == hashlib.sha256((source / name).read_bytes()).hexdigest()

    opened: list[str] = []
    real_open = os.open

    def watching_open(path, *args, **kwargs):
        if str(source) in os.fsdecode(path):
            opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    real_read_bytes = Path.read_bytes

    def watching_read_bytes(self):
        if str(source) in str(self):
            opened.append(str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(os, "open", watching_open)
    monkeypatch.setattr(Path, "read_bytes", watching_read_bytes)
    second = anonymize_dataset(str(source), str(dest), detection=CPU)
    assert second.images_unchanged == 3
    assert second.images_read == second.images_inferred == 0
    assert opened == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.binary(min_size=1, max_size=256),
    other=st.binary(min_size=1, max_size=256),
    how=st.sampled_from(["in-place", "copy2", "rename"]),
)
def test_replacing_a_file_changes_its_fingerprint_or_makes_it_racy(
    tmp_path_factory, content: bytes, other: bytes, how: str
) -> None:
    """However a file is replaced (same size, mtime put back), the planner never trusts it."""
    other = (other * (len(content) // len(other) + 1))[: len(content)]
    folder = tmp_path_factory.mktemp("fp")
    path = folder / "x.jpg"
    path.write_bytes(content)
    listed_at_ns = _now_ns()
    old = path.stat()
    if how == "in-place":
        path.write_bytes(other)
    else:
        staged = folder / "staged"
        staged.write_bytes(other)
        if how == "copy2":
            shutil.copy2(staged, path)
        else:
            staged.replace(path)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    old_fingerprint, new_fingerprint = local_fingerprint(old), local_fingerprint(path.stat())
    image = ImageRef(relative_path="x.jpg", size_bytes=len(content), fingerprint=new_fingerprint)
    prior = ManifestRow(
        source="x.jpg",
        output="x.jpg",
        status=ImageStatus.WRITTEN,
        source_fingerprint=old_fingerprint,
        output_fingerprint="out",
        render_key="key-with-" + old_fingerprint,
        score_floor=0.1,
        model_sha256="0",
        package_version="0",
        listed_at_ns=listed_at_ns,
    )
    key = "key-with-" + new_fingerprint  # render keys digest the source fingerprint
    trusted = is_up_to_date(image, prior, key, 0.4, lambda relative: "out")
    assert not trusted or content == other


def _now_ns() -> int:
    import time

    return time.time_ns()


def test_a_fingerprint_taken_in_the_tick_of_a_change_is_racy() -> None:
    fingerprint = "size:1:mtime_ns:5:ino:7:ctime_ns:1000000000000"
    assert is_racy(fingerprint, 1_000_000_000_000)
    assert is_racy(fingerprint, 1_000_000_000_000 + RACY_WINDOW_NS)
    assert not is_racy(fingerprint, 1_000_000_000_000 + RACY_WINDOW_NS + 1)
    assert is_racy(fingerprint, None)  # an older manifest never recorded its listing time
    assert not is_racy('etag:"abc"', None)  # an ETag digests the content itself


def test_write_images_refuses_bytes_not_bound_to_masking(tmp_path, astronaut_rgb) -> None:
    """The tasks are public: a hand-built value holding the source's own bytes is refused."""
    from anon_tasks.core.faces import Face

    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    content = _tiff(astronaut_rgb)
    (source / "a.tif").write_bytes(content)
    image = ImageRef(relative_path="a.tif", size_bytes=len(content), fingerprint="f")
    face = Face(xyxy=ASTRONAUT_FACE_XYXY, score=0.9)
    unbound = MaskedImage(image=image, status=ImageStatus.WRITTEN, faces=(face,), content=content)
    raw = MaskedImage(
        image=image,
        status=ImageStatus.WRITTEN,
        faces=(face,),
        content=content,
        content_sha256=hashlib.sha256(content).hexdigest(),
    )

    @flow(validate_parameters=False)
    def hand_built(index: int) -> None:
        item = (unbound, raw)[index]
        render = RenderSpec.from_settings(detection=CPU)
        write_images(MaskedShard(images=(item,)), str(source), str(dest), render)

    for index in (0, 1):
        with pytest.raises(ValueError, match="not masked output bytes"):
            hand_built(index)
    assert not (dest / "a.tif").exists()
