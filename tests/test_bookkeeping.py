"""Listing, cache keys, captions, the manifest, planning and the decoded-image cache."""

from __future__ import annotations

import json
import os

import numpy as np

from anon_tasks.core.records import ImageRef, ImageStatus, ManifestFace, ManifestRow
from anon_tasks.core.settings import DetectionSettings, OutputSettings
from anon_tasks.datasets.keys import shard_detection_key
from anon_tasks.datasets.listing import file_fingerprints, list_source
from anon_tasks.datasets.manifest import read_manifest, write_manifest
from anon_tasks.datasets.planning import up_to_date_rows
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.pipeline.decoded_cache import DecodedCache


def make_tree(root, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_listing_finds_images_with_their_sidecars_and_skips_the_rest(tmp_path) -> None:
    make_tree(
        tmp_path,
        {
            "a.jpg": b"1",
            "a.txt": b"caption",
            "a.json": b"{}",
            "b/C.PNG": b"22",
            "b/C.caption": b"x",
            "b/notes.md": b"",
            ".hidden/d.jpg": b"",
            "b/.e.jpg": b"",
        },
    )
    images = {image.relative_path: image for image in list_source(str(tmp_path))[0]}
    assert sorted(images) == ["a.jpg", "b/C.PNG"]
    assert [s.relative_path for s in images["a.jpg"].sidecars] == ["a.json", "a.txt"]
    assert [s.relative_path for s in images["b/C.PNG"].sidecars] == ["b/C.caption"]
    assert images["b/C.PNG"].size_bytes == 2


def test_links_to_outside_the_source_are_not_followed(tmp_path) -> None:
    outside = tmp_path / "outside"
    make_tree(outside, {"secret.jpg": b"x"})
    source = tmp_path / "source"
    make_tree(source, {"ok.jpg": b"y"})
    os.symlink(outside / "secret.jpg", source / "link.jpg")
    os.symlink(outside, source / "linked_dir")
    assert [image.relative_path for image in list_source(str(source))[0]] == ["ok.jpg"]


def test_fingerprint_changes_when_a_file_changes_in_place(tmp_path) -> None:
    make_tree(tmp_path, {"a.jpg": b"one"})
    (first,) = list_source(str(tmp_path))[0]
    os.utime(tmp_path / "a.jpg", ns=(1, 1))
    (tmp_path / "a.jpg").write_bytes(b"two")  # same size, new content
    (second,) = list_source(str(tmp_path))[0]
    assert first.fingerprint != second.fingerprint
    common = {
        "source": "s",
        "model_sha256": "m",
        "detection": DetectionSettings(),
        "output": OutputSettings(),
    }
    assert shard_detection_key([first], **common) != shard_detection_key([second], **common)


def row(source: str, **values) -> ManifestRow:
    base = {
        "source": source,
        "output": source,
        "status": ImageStatus.WRITTEN,
        "source_fingerprint": "f",
        "output_fingerprint": "o",
        "render_key": "k",
        "score_floor": 0.1,
        "model_sha256": "m",
        "package_version": "0",
    }
    return ManifestRow(**{**base, **values})


def test_manifest_round_trip_is_sorted_and_tolerates_bad_lines(tmp_path) -> None:
    url = write_manifest(str(tmp_path), [row("b.jpg"), row("a.jpg")])
    with open(url) as handle:
        lines = handle.read().splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["a.jpg", "b.jpg"]
    with open(url, "a") as handle:
        handle.write("not json\n")
    assert sorted(read_manifest(str(tmp_path))) == ["a.jpg", "b.jpg"]
    assert read_manifest(str(tmp_path / "missing")) == {}


def test_up_to_date_needs_same_key_untouched_output_and_same_masks() -> None:
    images = [ImageRef(relative_path=n, size_bytes=1, fingerprint="f") for n in "abcdefg"]
    face = ManifestFace(box=(0, 0, 10, 10), score=0.5)
    previous = {
        "a": row("a", faces=(face,), parameters={"threshold": 0.4}),
        "b": row("b", render_key="old"),
        "c": row("c"),
        "d": row("d", status=ImageStatus.FAILED, output=None),
        "e": row("e", faces=(face.model_copy(update={"score": 0.45}),)),  # not above 0.45
        "f": row("f", score_floor=None),  # written before floors were recorded
    }
    outputs = {"a": "o", "b": "o", "c": "edited", "e": "o", "f": "o"}
    rows = up_to_date_rows(images, previous, outputs, lambda image: "k", threshold=0.45)
    assert list(rows) == ["a"]
    assert rows["a"].status is ImageStatus.UNCHANGED
    assert rows["a"].parameters == {"threshold": 0.45}  # the threshold it holds for now


def test_file_fingerprints_skip_the_manifest_folder(tmp_path) -> None:
    make_tree(tmp_path, {"a.jpg": b"1", "_anonymize/manifest.jsonl": b"", "x/_anonymize/b": b""})
    assert sorted(file_fingerprints(str(tmp_path), skip_dir="_anonymize")) == [
        "a.jpg",
        "x/_anonymize/b",
    ]
    assert file_fingerprints(str(tmp_path / "nope")) == {}


def _megabyte_image() -> DecodedImage:
    return DecodedImage(frames=(np.zeros((1024, 1024), np.uint8),), format="PNG")


def test_decoded_cache_is_bounded_keeps_what_is_needed_soonest_and_pops_once() -> None:
    cache = DecodedCache(max_bytes=3 * 1024 * 1024)
    stored = [cache.put(f"u{index}", "f", _megabyte_image()) for index in range(5)]
    assert stored == [True, True, True, False, False]  # full: the newest are refused
    assert len(cache) == 3
    assert cache.nbytes <= cache.max_bytes
    assert cache.pop("u3", "f") is None
    assert cache.pop("u0", "f") is not None  # the first in, masked first, is still there
    assert cache.pop("u0", "f") is None
    assert cache.pop("u1", "other-fingerprint") is None
    assert cache.put("u5", "f", _megabyte_image())  # room again once one is taken


def test_decoded_cache_drops_images_whose_mask_task_never_came() -> None:
    now = [0.0]
    cache = DecodedCache(max_bytes=2 * 1024 * 1024, max_age_seconds=60, clock=lambda: now[0])
    assert cache.put("u0", "f", _megabyte_image())
    assert cache.put("u1", "f", _megabyte_image())
    now[0] = 30.0
    assert not cache.put("u2", "f", _megabyte_image())
    now[0] = 61.0
    assert cache.put("u2", "f", _megabyte_image())  # u0 and u1 expired
    assert cache.pop("u0", "f") is None
    assert len(cache) == 1


def test_stale_staging_files_are_removed_and_fresh_ones_kept(tmp_path) -> None:
    from anon_tasks.storage.writes import TEMP_PREFIX, remove_stale_staging_files

    old = tmp_path / f"{TEMP_PREFIX}crashed"
    fresh = tmp_path / f"{TEMP_PREFIX}writing"
    other = tmp_path / "keep.jpg"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    os.utime(old, (1, 1))
    os.utime(other, (1, 1))
    assert remove_stale_staging_files(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])
    assert remove_stale_staging_files(str(tmp_path / "missing")) == 0
