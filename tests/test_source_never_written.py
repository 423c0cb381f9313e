"""Invariant 5: the source is never written.

Overlapping layouts are refused before any work (exit code 2), on every storage in one normal
form; the writers refuse again at write time any target whose real path lies in the source.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks import cli
from anon_tasks.core.errors import ConfigurationError
from anon_tasks.datasets.manifest import INTERNAL_DIRS
from anon_tasks.datasets.paths import check_dataset_paths, check_file_paths

pytestmark = pytest.mark.usefixtures("prefect_api")


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (and link) under ``root`` with a digest of its content or target."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                found[str(path.relative_to(root))] = "link:" + os.readlink(path)
            elif path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def photos(tmp_path, astronaut_rgb) -> Path:
    source = tmp_path / "data" / "raw"
    (source / "raw").mkdir(parents=True)
    Image.fromarray(astronaut_rgb).save(source / "a.jpg", quality=90)
    Image.fromarray(astronaut_rgb).save(source / "raw" / "b.png")
    return source


@pytest.mark.parametrize(
    "dest_of",
    [
        lambda source: source,  # the source itself
        lambda source: source / "out",  # inside it
        lambda source: source.parent,  # a parent: data/raw/raw/b.png would land on raw/b.png
        lambda source: source.parent.parent,
        lambda source: str(source) + "/",
        lambda source: f"file://{source.parent}",
    ],
    ids=["same", "inside", "parent", "grandparent", "trailing-slash", "file-url-parent"],
)
def test_overlapping_dest_is_refused_with_exit_code_2(photos, dest_of, capsys) -> None:
    before = tree_digest(photos.parent.parent)
    code = cli.main([str(photos), str(dest_of(photos)), "--device", "cpu"])
    assert code == 2
    assert "source" in capsys.readouterr().err
    assert tree_digest(photos.parent.parent) == before


def test_dest_reached_through_a_link_to_the_source_is_refused(photos, tmp_path) -> None:
    link = tmp_path / "via-link"
    link.symlink_to(photos, target_is_directory=True)
    with pytest.raises(ConfigurationError) as refused:
        check_dataset_paths(str(photos), str(link / "out"))
    assert refused.value.field == "dest"


def test_result_storage_inside_the_source_is_refused(photos, tmp_path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_dataset_paths(str(photos), str(tmp_path / "out"), result_storage=str(photos / "c"))
    assert refused.value.field == "result_storage"
    check_dataset_paths(str(photos), str(tmp_path / "out"), result_storage="s3-bucket/cache")


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("s3://bucket/raw", "s3a://bucket/raw/anon"),
        ("s3a://bucket/raw/", "s3://bucket"),
        ("s3://bucket/raw", "s3n://bucket/raw"),
    ],
)
def test_object_store_overlap_is_refused_across_url_spellings(source, dest) -> None:
    with pytest.raises(ConfigurationError):
        check_dataset_paths(source, dest)


@pytest.mark.parametrize(
    ("source", "dest"), [("s3://bucket/raw", "s3://bucket/raw2"), ("s3://a/raw", "s3a://b/raw")]
)
def test_neighbouring_prefixes_are_not_overlaps(source, dest, monkeypatch) -> None:
    from anon_tasks.datasets import paths

    reached = []  # no store here: the overlap check passes, and the store is asked next
    monkeypatch.setattr(paths, "_check_remote_dest", lambda *args: reached.append("dest"))
    monkeypatch.setattr(paths, "_check_remote_source", lambda *args: reached.append("source"))
    check_dataset_paths(source, dest)
    assert reached == ["dest", "source"]


def test_a_symlinked_folder_in_dest_pointing_into_the_source_is_not_written_through(
    photos, tmp_path
) -> None:
    dest = tmp_path / "clean"
    dest.mkdir()
    (dest / "raw").symlink_to(photos / "raw", target_is_directory=True)
    before = tree_digest(photos)
    code = cli.main([str(photos), str(dest), "--device", "cpu", "--json"])
    assert code == 1  # raw/b.png fails: its output would land in the source
    assert tree_digest(photos) == before
    assert (dest / "a.jpg").is_file()


def test_single_file_onto_itself_is_refused(photos, tmp_path, capsys) -> None:
    image = photos / "a.jpg"
    before = image.read_bytes()
    assert cli.main([str(image), str(image), "--device", "cpu"]) == 2
    hard = tmp_path / "hard.jpg"
    os.link(image, hard)
    assert cli.main([str(image), str(hard), "--device", "cpu"]) == 2
    soft = tmp_path / "soft.jpg"
    soft.symlink_to(image)
    assert cli.main([str(image), str(soft), "--device", "cpu"]) == 2
    assert image.read_bytes() == before
    err = capsys.readouterr().err
    assert "Traceback" not in err


_NAMES = st.sampled_from(["a", "b", "raw", "out"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    source_parts=st.lists(_NAMES, min_size=1, max_size=3),
    dest_parts=st.lists(_NAMES, min_size=1, max_size=4),
    link_parts=st.lists(_NAMES, min_size=1, max_size=3),
    use_link=st.booleans(),
)
def test_refused_exactly_when_real_paths_overlap(
    tmp_path_factory, source_parts, dest_parts, link_parts, use_link
) -> None:
    """Generated layouts, with links: refused iff one real path contains the other."""
    root = tmp_path_factory.mktemp("layout")
    source = root.joinpath(*source_parts)
    source.mkdir(parents=True, exist_ok=True)
    dest = root.joinpath(*dest_parts)
    if use_link:
        link = root / "link"
        target = root.joinpath(*link_parts)
        target.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
        dest = link.joinpath(*dest_parts)
    real_source = Path(os.path.realpath(source))
    real_dest = Path(os.path.realpath(dest))
    overlapping = (
        real_dest == real_source
        or real_source in real_dest.parents
        or real_dest in real_source.parents
    )
    if overlapping:
        with pytest.raises(ConfigurationError) as refused:
            check_dataset_paths(str(source), str(dest))
        assert refused.value.field == "dest"
    else:
        check_dataset_paths(str(source), str(dest))


def test_check_file_paths_accepts_a_new_file_elsewhere(photos, tmp_path) -> None:
    check_file_paths(str(photos / "a.jpg"), str(tmp_path / "a.png"))


def test_a_linked_manifest_folder_in_dest_leading_into_the_source_is_refused(
    photos, tmp_path
) -> None:
    dest = tmp_path / "clean"
    dest.mkdir()
    (dest / "_anonymize").symlink_to(photos, target_is_directory=True)
    before = tree_digest(photos)
    with pytest.raises(ConfigurationError) as refused:
        check_dataset_paths(str(photos), str(dest))
    assert refused.value.field == "dest"
    assert cli.main([str(photos), str(dest), "--device", "cpu"]) == 2
    assert tree_digest(photos) == before


@pytest.mark.parametrize(
    "dest_of",
    [
        lambda source: f"{source}/out::memory://x",
        lambda source: f"local://{source}/notes::memory://m",
        lambda source: f"simplecache::file://{source}/out",
    ],
    ids=["chain-into-source", "local-chain", "cache-chain"],
)
def test_chained_urls_are_refused_before_any_work(photos, dest_of, capsys) -> None:
    """fsspec writes through a chain's first link: one storage would be checked, another
    written. Chains are refused whole."""
    before = tree_digest(photos)
    assert cli.main([str(photos), dest_of(photos), "--device", "cpu"]) == 2
    assert "chained" in capsys.readouterr().err
    assert tree_digest(photos) == before


@pytest.mark.parametrize(
    ("source", "dest", "field"),
    [
        ("foo://bucket/raw", "s3://bucket/out", "source"),
        ("S3://bucket/raw", "s3://bucket/out", "source"),
        ("s3://bucket/raw", "s3://user:pw@bucket/out", "dest"),
        ("s3://bucket/raw?versionId=1", "s3://bucket/out", "source"),
    ],
)
def test_urls_a_run_cannot_use_are_refused_naming_the_field(source, dest, field) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_dataset_paths(source, dest)
    assert refused.value.field == field
    assert "pw@" not in str(refused.value)


@pytest.mark.parametrize(
    "inner", [folder.split("/", 1)[1] for folder in INTERNAL_DIRS if "/" in folder]
)
def test_a_linked_internal_folder_of_dest_leading_into_the_source_is_refused(
    photos, tmp_path, inner
) -> None:
    """Every folder the tool writes its own files into (cache, staging, journal, review...),
    read from the one list the preflight checks, so a new one is tested as it is added."""
    dest = tmp_path / "clean"
    (dest / "_anonymize").mkdir(parents=True)
    (dest / "_anonymize" / inner).symlink_to(photos, target_is_directory=True)
    old = photos / ".anon-tmp-notes"
    old.write_text("keep")
    os.utime(old, (1, 1))
    before = tree_digest(photos)
    assert cli.main([str(photos), str(dest), "--device", "cpu"]) == 2
    assert tree_digest(photos) == before


def test_a_result_storage_that_names_no_block_is_one_line_and_exit_2(
    photos, tmp_path, capsys
) -> None:
    code = cli.main([str(photos), str(tmp_path / "out"), "--result-storage", "raw/cache"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "result_storage" in err


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blank=st.text(" \t\n\r", max_size=4),
    field=st.sampled_from(["source", "dest", "result_storage"]),
)
def test_an_empty_path_is_refused_never_read_as_the_working_directory(
    tmp_path, blank: str, field: str
) -> None:
    """Every path a run is given goes through one rule: an empty one names the field, whether
    it came from a form, an event's payload or a script; a local "" would be the working
    directory."""
    (tmp_path / "raw").mkdir(exist_ok=True)
    paths = {"source": str(tmp_path / "raw"), "dest": str(tmp_path / "clean")}
    storage = None
    if field == "result_storage":
        storage = blank
    else:
        paths[field] = blank
    with pytest.raises(ConfigurationError, match=f"^{field} is empty") as caught:
        check_dataset_paths(paths["source"], paths["dest"], result_storage=storage)
    assert caught.value.field == field
    with pytest.raises(ConfigurationError, match=r"^dest is empty"):
        check_file_paths(str(tmp_path / "raw" / "a.jpg"), blank)
