"""Locations: filesystems for URLs, safe relative paths, and comparing where URLs point."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from anon_tasks.core.errors import UnsafePathError
from anon_tasks.storage import locations
from anon_tasks.storage.locations import (
    location_within,
    normalize_location,
    safe_relative_path,
    url_to_fs,
)


def test_s3_gets_connect_and_read_timeouts_unless_the_options_set_them() -> None:
    fs, path = url_to_fs("s3://bucket/key.jpg", {"anon": True, "skip_instance_cache": True})
    assert path == "bucket/key.jpg"
    assert fs.config_kwargs["connect_timeout"] == locations.S3_CONNECT_TIMEOUT_S
    assert fs.config_kwargs["read_timeout"] == locations.S3_READ_TIMEOUT_S
    options = {"anon": True, "skip_instance_cache": True, "config_kwargs": {"read_timeout": 7}}
    fs, _ = url_to_fs("s3a://bucket/key.jpg", options)
    assert fs.config_kwargs["read_timeout"] == 7
    assert fs.config_kwargs["connect_timeout"] == locations.S3_CONNECT_TIMEOUT_S
    assert options["config_kwargs"] == {"read_timeout": 7}  # the caller's options untouched


# --- locations ---------------------------------------------------------------------------------


def test_s3_aliases_slashes_and_segments() -> None:
    assert normalize_location("s3://b/raw/") == ("s3", "b/raw")
    assert normalize_location("s3a://b//raw/./x") == ("s3", "b/raw/x")
    assert normalize_location("s3n://b/raw") == ("s3", "b/raw")
    assert location_within("s3a://b/raw/x.jpg", "s3://b/raw")
    assert location_within("s3://b/raw", "s3n://b/raw/")
    assert not location_within("s3://b/raw2/x.jpg", "s3://b/raw")
    assert not location_within("s3://b2/raw", "s3://b/raw")
    assert not location_within("s3://b/raw", "s3://b/raw/x")
    assert not location_within("memory://b/raw/x", "s3://b/raw")
    assert not location_within("b/raw/x", "s3://b/raw")
    # '..' is literal in an object store ('raw/../x' is listed under 'raw/') and read as a
    # person would; either makes it inside.
    assert location_within("s3://b/raw/../x", "s3://b/raw")
    assert location_within("s3://b/out/../raw/x", "s3://b/raw")


def test_local_paths_compare_by_real_path(tmp_path) -> None:
    (tmp_path / "real" / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "a")
    assert normalize_location(f"file://{tmp_path}/link/b/") == ("file", str(tmp_path / "real/a/b"))
    assert location_within(str(tmp_path / "link" / "b" / "x.jpg"), str(tmp_path / "real" / "a"))
    assert location_within(f"{tmp_path}/real//a/b/../b", f"file://{tmp_path}/link/")
    assert not location_within(str(tmp_path / "real" / "a2"), str(tmp_path / "real" / "a"))
    assert location_within(str(tmp_path / "real" / "a"), str(tmp_path / "link"))


_SEGMENT = st.sampled_from(["raw", "raw2", "r", "a", "a.b", "x y"])
_NOISE = st.sampled_from(["", "/", "/./", "//"])


def noisy(segments: list[str], draw_noise) -> str:
    """``segments`` joined with extra slashes, ``.`` segments and trailing slashes."""
    return "/".join(segment + draw_noise() for segment in segments) + draw_noise()


@settings(max_examples=60, deadline=None)
@given(
    inner=st.lists(_SEGMENT, min_size=1, max_size=4),
    outer=st.lists(_SEGMENT, min_size=1, max_size=3),
    schemes=st.tuples(*[st.sampled_from(["s3", "s3a", "s3n"])] * 2),
    data=st.data(),
)
def test_object_store_containment_is_segment_prefix(inner, outer, schemes, data) -> None:
    def draw_noise() -> str:
        return data.draw(_NOISE)

    inner_url = f"{schemes[0]}://bucket/{noisy(inner, draw_noise)}"
    outer_url = f"{schemes[1]}://bucket/{noisy(outer, draw_noise)}"
    assert normalize_location(inner_url) == ("s3", "bucket/" + "/".join(inner))
    assert location_within(inner_url, outer_url) == (inner[: len(outer)] == outer)


def resolve_parents(segments: list[str]) -> list[str]:
    kept: list[str] = []
    for segment in segments:
        if segment != "..":
            kept.append(segment)
        elif kept:
            kept.pop()
    return kept


@settings(max_examples=60, deadline=None)
@given(
    inner=st.lists(st.one_of(_SEGMENT, st.just("..")), min_size=1, max_size=5),
    outer=st.lists(st.one_of(_SEGMENT, st.just("..")), min_size=1, max_size=3),
)
def test_object_store_keys_with_dot_dot_count_as_inside_when_listed_or_resolved_inside(
    inner, outer
) -> None:
    listed = inner[: len(outer)] == outer  # the key is under the prefix as the store lists it
    resolved_inner, resolved_outer = resolve_parents(inner), resolve_parents(outer)
    resolved = resolved_inner[: len(resolved_outer)] == resolved_outer
    within = location_within(f"s3://bucket/{'/'.join(inner)}", f"s3://bucket/{'/'.join(outer)}")
    assert within == (listed or resolved)
    if listed:  # the safety half, checked against a store that keeps keys literally
        memory = MemoryFileSystem()
        key = f"/prefixes/{'/'.join(inner)}"
        memory.pipe(key, b"x")
        try:
            assert key in memory.find(f"/prefixes/{'/'.join(outer)}")
        finally:
            memory.rm_file(key)


@settings(max_examples=50, deadline=None)
@given(
    inner=st.lists(st.sampled_from(["a", "b", "link", "..", ".", ""]), min_size=1, max_size=5),
    outer=st.lists(st.sampled_from(["a", "b", "link", "..", "."]), min_size=1, max_size=3),
    trailing=st.booleans(),
    file_url=st.booleans(),
)
def test_local_containment_matches_the_resolved_paths(
    tmp_path_factory, inner, outer, trailing, file_url
) -> None:
    base = tmp_path_factory.getbasetemp() / "locations"
    if not base.exists():
        (base / "a" / "b").mkdir(parents=True)
        (base / "b").mkdir()
        (base / "link").symlink_to(base / "a")
        (base / "a" / "link").symlink_to("../b")
    inner_path = str(base) + "/" + "/".join(inner) + ("/" if trailing else "")
    outer_path = str(base) + "/" + "/".join(outer)
    expected = Path(os.path.realpath(inner_path)).is_relative_to(os.path.realpath(outer_path))
    inner_url = f"file://{inner_path}" if file_url else inner_path
    assert location_within(inner_url, outer_path) == expected


def test_other_fsspec_protocols_use_their_filesystem_name() -> None:
    assert normalize_location("memory://x/y/") == ("memory", "x/y")
    assert location_within("memory://x/y/z", "memory:///x/y")
    assert normalize_location("local:///tmp/../tmp/x")[0] == "file"
    family, path = normalize_location("gcs://bucket/k/")
    assert (family, path) == ("gs", "bucket/k")
    assert location_within("gs://bucket/k/v", "gcs://bucket/k")
    assert posixpath.isabs(normalize_location("file://relative/x")[1])


# --- relative paths ----------------------------------------------------------------------------


def test_a_colon_is_a_legal_posix_name(monkeypatch) -> None:
    assert safe_relative_path("a:b.jpg") == "a:b.jpg"
    assert safe_relative_path("C:/x.jpg") == "C:/x.jpg"
    monkeypatch.setattr(os, "name", "nt")
    for relative in ("a:b.jpg", "C:/x.jpg", "folder/file.jpg:stream"):
        with pytest.raises(UnsafePathError):
            safe_relative_path(relative)


@pytest.mark.parametrize(
    "relative",
    ["../x.jpg", "a/../../x", "/abs.jpg", "a\\b.jpg", "a\x00.jpg", "a//b", "", "./a", "a/"],
)
def test_escaping_relative_paths_are_still_refused(relative) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(relative)
