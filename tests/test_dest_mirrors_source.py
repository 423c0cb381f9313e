"""Invariant 7: dest mirrors the source.

When a source image goes (consent withdrawn) or can no longer be anonymised, the next run
deletes the output an earlier run wrote for it, with a row saying so. Only files a previous
manifest records as this tool's outputs are deleted, and a partition only deletes its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.settings import DetectionSettings, RunSettings
from anon_tasks.datasets.sharding import partition_of
from anon_tasks.flows import anonymize_dataset

pytestmark = pytest.mark.usefixtures("prefect_api")

CPU = DetectionSettings(device="cpu")
ALLOW = RunSettings(allow_failures=True, caption_note="faces are blurred")


def manifest(dest: Path) -> dict[str, dict]:
    lines = (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    return {row["source"]: row for row in map(json.loads, lines)}


def outputs(dest: Path) -> set[str]:
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and "_anonymize" not in p.parts
    }


@pytest.fixture
def small_photos(astronaut_rgb):
    """Four small real photos (a face in each), cheap to run through the model."""
    return [
        np.ascontiguousarray(np.roll(astronaut_rgb, 60 * i, axis=1)[::2, ::2]) for i in range(4)
    ]


def write_dataset(source: Path, photos, names) -> None:
    for name, pixels in zip(names, photos, strict=False):
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        path.with_suffix(".txt").write_text("a person outdoors\n")


def test_deleted_source_removes_its_output_and_captions(tmp_path, small_photos) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "sub/b.png", "c.png"])
    (dest / "mine").mkdir(parents=True)
    (dest / "mine" / "notes.png").write_bytes(b"the user's own file")  # never recorded by us
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert {"a.png", "a.txt", "sub/b.png", "sub/b.txt"} <= outputs(dest)

    (source / "sub" / "b.png").unlink()  # consent withdrawn
    (source / "sub" / "b.txt").unlink()
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_removed == 1
    assert "sub/b.png" not in outputs(dest)
    assert "sub/b.txt" not in outputs(dest)
    assert (dest / "mine" / "notes.png").read_bytes() == b"the user's own file"
    assert manifest(dest)["sub/b.png"]["status"] == "removed"
    # Once removed, the row goes on the next run: nothing is left to say about it.
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert "sub/b.png" not in manifest(dest)


def test_source_that_became_unreadable_loses_its_output(tmp_path, small_photos) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png"])
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    (source / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt now
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.failed_images == ("b.png",)
    row = manifest(dest)["b.png"]
    assert row["status"] == "failed"
    assert row["output"] is None
    assert "removed" in row["error"]
    assert "b.png" not in outputs(dest)
    assert "b.txt" not in outputs(dest)
    assert "a.png" in outputs(dest)


def test_a_partition_removes_only_its_own_outputs(tmp_path, small_photos) -> None:
    names = [f"img{i}.png" for i in range(12)]
    photos = (small_photos * 3)[:12]
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, photos, names)
    owner = {name: partition_of(name, 2) for name in names}
    assert set(owner.values()) == {0, 1}
    for index in (0, 1):
        part = ALLOW.model_copy(update={"partition_index": index, "partition_count": 2})
        anonymize_dataset(str(source), str(dest), detection=CPU, run=part)
    gone = [name for name in names if owner[name] == 0][:2]
    for name in gone:
        (source / name).unlink()
    part1 = ALLOW.model_copy(update={"partition_index": 1, "partition_count": 2})
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=part1)
    assert summary.images_removed == 0
    assert set(gone) <= outputs(dest)  # partition 1 never deletes partition 0's outputs
    part0 = ALLOW.model_copy(update={"partition_index": 0, "partition_count": 2})
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=part0)
    assert summary.images_removed == len(gone)
    assert not set(gone) & outputs(dest)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(removed=st.sets(st.integers(0, 3), max_size=4), broken=st.sets(st.integers(0, 3)))
def test_generated_removals_leave_exactly_the_surviving_outputs(
    tmp_path_factory, small_photos, removed, broken
) -> None:
    root = tmp_path_factory.mktemp("mirror")
    source, dest = root / "raw", root / "clean"
    names = [f"d{i}/p{i}.png" for i in range(4)]
    write_dataset(source, small_photos, names)
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    for index in removed:
        (source / names[index]).unlink()
    for index in broken - removed:
        (source / names[index]).write_bytes(b"not an image at all")
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    alive = {names[i] for i in range(4) if i not in removed | broken}
    images_left = {name for name in outputs(dest) if name.endswith(".png")}
    assert images_left == alive


def test_an_output_replaced_by_the_user_or_outside_dest_is_never_deleted(
    tmp_path, small_photos
) -> None:
    """A tampered manifest or a file the user put in place of an output: left alone."""
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png", "c.png", "d.png"])
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    (dest / "a.png").write_bytes(b"the user's own version")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    manifest_path = dest / "_anonymize" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    for row in rows:
        if row["source"] == "b.png":
            row["output"] = "../precious.txt"
            row["output_fingerprint"] = None
        if row["source"] == "c.png":
            row["sidecars"] = {"_anonymize/manifest.jsonl": "x", "../precious.txt": "y"}
    manifest_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("a.png", "b.png", "c.png", "a.txt", "b.txt", "c.txt"):
        (source / name).unlink()
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert (dest / "a.png").read_bytes() == b"the user's own version"
    assert outside.read_text() == "keep me"
    assert "c.png" not in outputs(dest)
    assert manifest_path.exists()


def test_an_empty_or_unreachable_source_never_deletes_every_output(tmp_path, small_photos) -> None:
    from anon_tasks.core.errors import ConfigurationError

    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png"])
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    for path in source.iterdir():
        path.unlink()
    with pytest.raises(ConfigurationError, match="refusing to delete"):
        anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert {"a.png", "b.png"} <= outputs(dest)


def test_a_file_may_replace_a_folder_of_outputs_and_back(tmp_path, small_photos) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["keep.png", "a.png"])
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    (source / "a.png").unlink()
    (source / "a.txt").unlink()
    (source / "a.png").mkdir()
    Image.fromarray(small_photos[1]).save(source / "a.png" / "inner.png")
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_failed == 0
    assert (dest / "a.png" / "inner.png").is_file()
    (source / "a.png" / "inner.png").unlink()
    (source / "a.png").rmdir()
    Image.fromarray(small_photos[2]).save(source / "a.png")
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_failed == 0
    assert (dest / "a.png").is_file()


def test_a_caption_shared_by_two_images_stays_while_one_of_them_does(
    tmp_path, small_photos
) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    Image.fromarray(small_photos[0]).save(source / "x.jpg", quality=90)
    Image.fromarray(small_photos[1]).save(source / "x.png")
    (source / "x.txt").write_text("a person\n")
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    (source / "x.png").unlink()
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_removed == 1
    assert (dest / "x.txt").is_file()
    assert "x.txt" in manifest(dest)["x.jpg"]["sidecars"]


def test_nothing_outside_dest_is_deleted_through_a_link_in_dest(tmp_path, small_photos) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png"])
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep")
    (dest / "lnk").symlink_to(victim, target_is_directory=True)
    manifest_path = dest / "_anonymize" / "manifest.jsonl"
    ghost = dict(manifest(dest)["a.png"])
    ghost.update(
        source="ghost.png",
        output="missing.png",
        sidecars={"lnk/important.txt": "f"},
    )
    with manifest_path.open("a") as handle:
        handle.write(json.dumps(ghost) + "\n")
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert (victim / "important.txt").read_text() == "keep"


def test_captions_follow_the_source_even_with_cached_detections(tmp_path, small_photos) -> None:
    """Detections are cached by image; captions are not: edited, removed and added caption
    files reach dest as they are in the source now."""
    source, dest = tmp_path / "raw", tmp_path / "clean"
    source.mkdir()
    Image.fromarray(small_photos[0]).save(source / "a.png")
    Image.fromarray(small_photos[1]).save(source / "b.png")
    (source / "a.txt").write_text("Jane Doe, 12 Elm St\n")
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    (source / "a.txt").write_text("a woman\n")
    (source / "b.txt").write_text("a man\n")
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_inferred == 0  # the detections themselves are still good
    assert (dest / "a.txt").read_text().startswith("a woman")
    assert (dest / "b.txt").read_text().startswith("a man")
    (source / "a.txt").unlink()
    anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert not (dest / "a.txt").exists()


def test_captions_of_an_image_that_could_not_be_written_are_not_left(
    tmp_path, small_photos
) -> None:
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png"])
    (dest / "a.png").mkdir(parents=True)  # in the way of the output
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.failed_images == ("a.png",)
    assert not (dest / "a.txt").exists()
    assert (dest / "b.txt").exists()


def test_orphans_are_found_whatever_layout_wrote_them(tmp_path, small_photos) -> None:
    """Two partitions, then three, then a plain run: each sees what the others recorded."""
    names = [f"im{i}.png" for i in range(6)]
    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, (small_photos * 2)[:6], names)
    for index in range(2):
        part = ALLOW.model_copy(update={"partition_index": index, "partition_count": 2})
        anonymize_dataset(str(source), str(dest), detection=CPU, run=part)
    (source / "im0.png").unlink()
    (source / "im1.png").unlink()
    removed = 0
    for index in range(3):
        part = ALLOW.model_copy(update={"partition_index": index, "partition_count": 3})
        removed += anonymize_dataset(str(source), str(dest), detection=CPU, run=part).images_removed
    assert removed == 2
    assert not {"im0.png", "im1.png"} & outputs(dest)
    (source / "im2.png").unlink()
    plain = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert plain.images_removed == 1
    assert "im2.png" not in outputs(dest)


def test_a_run_stopped_before_its_manifest_leaves_a_journal_the_next_run_reads(
    tmp_path, small_photos, monkeypatch
) -> None:
    import importlib

    flow_module = importlib.import_module("anon_tasks.flows.anonymize_dataset")

    source, dest = tmp_path / "raw", tmp_path / "clean"
    write_dataset(source, small_photos, ["a.png", "b.png", "c.png"])

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped before the manifest")

    monkeypatch.setattr(flow_module, "write_manifest", stopped)
    with pytest.raises(RuntimeError, match="stopped"):
        anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    monkeypatch.undo()
    assert "a.png" in outputs(dest)
    assert not (dest / "_anonymize" / "manifest.jsonl").exists()
    (source / "a.png").unlink()
    summary = anonymize_dataset(str(source), str(dest), detection=CPU, run=ALLOW)
    assert summary.images_removed == 1
    assert summary.images_unchanged == 2  # what the stopped run wrote is trusted, not redone
    assert "a.png" not in outputs(dest)
    assert not list((dest / "_anonymize" / "journal").glob("*.jsonl"))
