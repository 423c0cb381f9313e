"""Atomic writes: the umask honoured, and never a write into the protected source."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import event, given, settings
from hypothesis import strategies as st

from anon_tasks.core.errors import UnsafePathError
from anon_tasks.storage import writes
from anon_tasks.storage.writes import write_bytes_atomic

# --- the umask ---------------------------------------------------------------------------------


@pytest.fixture
def set_umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
@pytest.mark.parametrize("staged", [False, True])
def test_written_files_and_folders_honour_the_umask(tmp_path, set_umask, mask, staged) -> None:
    set_umask(mask)
    target = tmp_path / "dest" / "new" / "deeper" / "face.jpg"
    staging = str(tmp_path / "dest" / "_anonymize" / "tmp") if staged else None
    write_bytes_atomic(str(target), b"one", staging_dir=staging)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    for folder in (tmp_path / "dest", target.parent.parent, target.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    write_bytes_atomic(str(target), b"two", staging_dir=staging)  # replacing keeps the rule
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_the_umask_is_read_without_proc_too(set_umask, monkeypatch) -> None:
    set_umask(0o027)
    assert writes._current_umask() == 0o027

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(writes, "open", no_proc, raising=False)
    assert writes._current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # and it was put back


# --- never writing into the source -------------------------------------------------------------


@pytest.fixture
def trees(tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.jpg").write_bytes(b"original a")
    (source / "sub" / "b.jpg").write_bytes(b"original b")
    dest = tmp_path / "dest"
    dest.mkdir()
    return source, dest


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (links not followed): folders, link targets, file hashes."""
    entries: dict[str, object] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                entries[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[relative] = "folder"
            else:
                entries[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@pytest.mark.parametrize("relative_link", [False, True])
def test_a_linked_folder_in_dest_leading_into_the_source_is_refused(trees, relative_link) -> None:
    source, dest = trees
    link = dest / "linked"
    link.symlink_to(os.path.relpath(source / "sub", dest) if relative_link else source / "sub")
    before = snapshot(source), snapshot(dest)
    for target in (link / "b.jpg", link / "new.jpg", link / "new" / "deeper.jpg"):
        with pytest.raises(UnsafePathError):
            write_bytes_atomic(str(target), b"masked", protected_root=str(source))
    assert (snapshot(source), snapshot(dest)) == before  # nothing created, nothing changed


def test_a_target_that_is_a_link_to_a_source_file_is_refused(trees) -> None:
    source, dest = trees
    (dest / "a.jpg").symlink_to(source / "a.jpg")
    (dest / "chain.jpg").symlink_to(dest / "a.jpg")
    for name in ("a.jpg", "chain.jpg"):
        with pytest.raises(UnsafePathError):
            write_bytes_atomic(str(dest / name), b"masked", protected_root=str(source))
    assert (source / "a.jpg").read_bytes() == b"original a"
    assert (dest / "a.jpg").is_symlink()


def test_the_source_itself_a_staging_folder_inside_it_and_a_linked_root_are_refused(
    trees,
) -> None:
    source, dest = trees
    before = snapshot(source)
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(str(source), b"x", protected_root=str(source))
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(
            str(dest / "x.jpg"), b"x", staging_dir=str(source / "tmp"), protected_root=str(source)
        )
    root_link = source.parent / "source-link"
    root_link.symlink_to(source)
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(f"file://{source}/sub/c.jpg", b"x", protected_root=str(root_link))
    assert snapshot(source) == before
    assert not (dest / "x.jpg").exists()
    write_bytes_atomic(str(dest / "x.jpg"), b"fine", protected_root=str(root_link))
    assert (dest / "x.jpg").read_bytes() == b"fine"


def test_a_hard_link_in_dest_is_replaced_and_the_source_file_untouched(trees) -> None:
    source, dest = trees
    os.link(source / "a.jpg", dest / "a.jpg")
    write_bytes_atomic(str(dest / "a.jpg"), b"masked", protected_root=str(source))
    assert (dest / "a.jpg").read_bytes() == b"masked"
    assert (source / "a.jpg").read_bytes() == b"original a"
    assert (source / "a.jpg").stat().st_nlink == 1
    assert not os.path.samefile(source / "a.jpg", dest / "a.jpg")


@pytest.mark.parametrize("durable", [True, False])
def test_a_folder_swapped_for_a_link_during_the_write_is_caught_before_the_rename(
    trees, monkeypatch, tmp_path, durable
) -> None:
    source, dest = trees
    (dest / "sub").mkdir()
    staging = tmp_path / "staging"
    real_fchmod = os.fchmod

    def fchmod_then_swap(descriptor: int, mode: int) -> None:  # between the checks
        real_fchmod(descriptor, mode)
        (dest / "sub").rename(dest / "moved")
        (dest / "sub").symlink_to(source / "sub")

    monkeypatch.setattr(os, "fchmod", fchmod_then_swap)
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(
            str(dest / "sub" / "b.jpg"),
            b"masked",
            staging_dir=str(staging),
            protected_root=str(source),
            durable=durable,
        )
    assert (source / "sub" / "b.jpg").read_bytes() == b"original b"
    assert list(staging.iterdir()) == []  # the temporary file is gone


def test_files_written_without_a_flush_each_are_flushed_once_per_filesystem(
    tmp_path, monkeypatch
) -> None:
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    urls = [str(tmp_path / "out" / f"part{i % 3}" / f"{i}.jpg") for i in range(12)]
    for url in urls:
        write_bytes_atomic(url, b"masked", durable=False)
    assert fsyncs == []  # no flush per file
    flushed: list[int] = []
    real = writes._syncfs()
    if real is None:
        pytest.skip("no syncfs here: every filesystem is flushed with os.sync")
    monkeypatch.setattr(writes, "_syncfs", lambda: lambda fd: flushed.append(real(fd)) or 0)
    writes.flush_to_disk([*urls, str(tmp_path / "gone" / "x.jpg"), "memory://bucket/y.jpg"])
    assert flushed == [0]  # one filesystem, one call, and it succeeded
    assert all(Path(url).read_bytes() == b"masked" for url in urls)


def test_object_store_targets_inside_the_protected_prefix_are_refused() -> None:
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(
            "memory://guarded/raw/x.jpg", b"x", protected_root="memory://guarded/raw/"
        )
    write_bytes_atomic("memory://guarded/raw2/x.jpg", b"x", protected_root="memory://guarded/raw")
    assert MemoryFileSystem().cat_file("/guarded/raw2/x.jpg") == b"x"
    assert not MemoryFileSystem().exists("/guarded/raw/x.jpg")


#: Where the generated trees put things: folders, files and links, in source and dest.
_FOLDERS = ["source/d0", "source/d0/d1", "dest/d0", "dest/d0/d1", "elsewhere"]
_FILES = ["source/f.jpg", "source/d0/g.jpg", "source/d0/d1/h.jpg"]
_LINK_HOMES = ["dest", "dest/d0", "dest/d0/d1", "source/d0", "elsewhere"]
_LINK_TARGETS = [*_FOLDERS, *_FILES, "source", "dest", "nowhere", "source/missing"]
_SEGMENTS = ["d0", "d1", "l0", "l1", "l2", "l3", "..", "new", "source"]
_NAMES = ["x.jpg", "f.jpg", "g.jpg", "h.jpg", "l0", "l1", "l2", "l3"]

links_strategy = st.lists(
    st.tuples(
        st.sampled_from(_LINK_HOMES),
        st.one_of(
            st.sampled_from(_LINK_TARGETS),
            st.sampled_from(_LINK_HOMES).map(lambda home: f"{home}/l{{}}"),  # chains, loops
        ),
        st.booleans(),  # relative or absolute
    ),
    min_size=1,
    max_size=4,
)
targets_strategy = st.lists(
    st.tuples(st.lists(st.sampled_from(_SEGMENTS), max_size=3), st.sampled_from(_NAMES)),
    min_size=1,
    max_size=5,
)


def build_tree(base: Path, links) -> None:
    for folder in _FOLDERS:
        (base / folder).mkdir(parents=True, exist_ok=True)
    for file in _FILES:
        (base / file).write_bytes(file.encode())
    for index, (home, target, relative) in enumerate(links):
        target = target.replace("{}", str((index + 1) % len(links)))
        link = base / home / f"l{index}"
        pointed = base / target
        link.symlink_to(os.path.relpath(pointed, link.parent) if relative else pointed)


@settings(max_examples=60, deadline=None)
@given(links=links_strategy, targets=targets_strategy, root_name=st.sampled_from(["source", "rl"]))
def test_generated_link_trees_never_let_a_write_change_the_source(
    tmp_path_factory, links, targets, root_name
) -> None:
    base = tmp_path_factory.mktemp("tree")
    build_tree(base, links)
    (base / "rl").symlink_to(base / "source")  # the protected root named through a link
    for segments, name in targets:
        target = base / "dest" / "/".join([*segments, name])
        source_before = snapshot(base / "source")
        dest_before = snapshot(base / "dest")
        try:
            write_bytes_atomic(str(target), b"masked", protected_root=str(base / root_name))
            event("written")
        except UnsafePathError:
            event("refused")
            assert snapshot(base / "dest") == dest_before  # refused before creating anything
        except OSError:
            event("refused by the OS")  # e.g. a link to a file where a folder is needed
        assert snapshot(base / "source") == source_before
