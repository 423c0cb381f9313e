"""Storage safety: bounded reads, the umask, never writing into the source, location compares."""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import event, given, settings
from hypothesis import strategies as st

from anon_tasks.core.errors import UnreadableFileError, UnsafePathError
from anon_tasks.storage import files as storage
from anon_tasks.storage.files import (
    location_within,
    normalize_location,
    read_bytes,
    read_head,
    safe_relative_path,
    url_to_fs,
    write_bytes_atomic,
)


def finishes_within(seconds: float, function, *args, **kwargs):
    """``function(*args, **kwargs)``'s result or exception, failing if it takes longer."""
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    outcome["elapsed"] = time.monotonic() - started
    return outcome


# --- bounded reads -----------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_bytes, lambda path: read_head(path, 16)])
def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path, reader) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    try:
        outcome = finishes_within(5, reader, str(fifo))
    finally:  # a reader blocked in open() is released by a writer appearing
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    error = outcome.get("error")
    assert isinstance(error, UnreadableFileError), outcome
    assert "FIFO" in error.reason
    assert outcome["elapsed"] < 2


def test_devices_folders_and_sockets_are_refused_and_named(tmp_path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    sock_path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        cases = {"/dev/null": "character device", str(folder): "folder", str(sock_path): "socket"}
        for path, what in cases.items():
            with pytest.raises(UnreadableFileError) as caught:
                read_bytes(path)
            assert what in caught.value.reason
            with pytest.raises(UnreadableFileError):
                read_head(path, 4)


def test_link_loops_are_unreadable_and_dangling_links_are_missing(tmp_path) -> None:
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    with pytest.raises(UnreadableFileError, match="link loop"):
        read_bytes(str(tmp_path / "a.jpg"))
    (tmp_path / "dangling.jpg").symlink_to("nowhere.jpg")
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "dangling.jpg"))
    with pytest.raises(FileNotFoundError):
        read_bytes(f"file://{tmp_path}/missing.jpg")


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 5000), limit=st.integers(0, 5000), seed=st.binary(min_size=1))
def test_files_up_to_the_limit_are_read_whole_and_larger_ones_refused(size, limit, seed) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.bin"
        content = (seed * (size // len(seed) + 1))[:size]
        path.write_bytes(content)
        if size <= limit:
            assert read_bytes(str(path), max_bytes=limit) == content
        else:
            with pytest.raises(UnreadableFileError, match="read limit"):
                read_bytes(str(path), max_bytes=limit)
        assert read_head(str(path), limit) == content[:limit]


def test_a_file_growing_while_read_is_refused(tmp_path, monkeypatch) -> None:
    path = tmp_path / "growing.tif"
    path.write_bytes(b"x" * 1000)
    real_fstat = os.fstat

    def fstat_then_grow(descriptor: int) -> os.stat_result:
        result = real_fstat(descriptor)
        if stat.S_ISREG(result.st_mode) and result.st_ino == os.stat(path).st_ino:
            with path.open("ab") as handle:  # the writer appends right after the size check
                handle.write(b"y" * 500)
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_grow)
    with pytest.raises(UnreadableFileError, match="grew"):
        read_bytes(str(path), max_bytes=1200)
    assert read_bytes(str(path), max_bytes=10_000) == b"x" * 1000 + b"y" * 1000


def test_a_slow_local_read_times_out_and_later_reads_still_work(tmp_path, monkeypatch) -> None:
    path = tmp_path / "slow.jpg"
    path.write_bytes(b"abc")
    real = storage._read_descriptor
    monkeypatch.setattr(storage, "_read_descriptor", lambda *args: time.sleep(1.5) or real(*args))
    started = time.monotonic()
    with pytest.raises(UnreadableFileError, match=r"did not finish within 0\.2 s"):
        read_bytes(str(path), timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    monkeypatch.setattr(storage, "_read_descriptor", real)
    assert read_bytes(str(path)) == b"abc"


def test_remote_reads_check_the_size_first_and_time_out(monkeypatch) -> None:
    memory = MemoryFileSystem()
    memory.pipe("/safety/big.bin", b"z" * 4096)
    memory.mkdir("/safety/folder.jpg")
    memory.pipe("/safety/folder.jpg/inner.bin", b"1")
    fetched: list[str] = []
    real_cat = MemoryFileSystem.cat_file

    def counting_cat(self, path, *args, **kwargs):
        fetched.append(path)
        return real_cat(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting_cat)
    assert read_bytes("memory://safety/big.bin") == b"z" * 4096
    assert read_head("memory://safety/big.bin", 10) == b"z" * 10
    fetched.clear()
    with pytest.raises(UnreadableFileError, match="read limit"):
        read_bytes("memory://safety/big.bin", max_bytes=4095)
    assert fetched == []  # refused from the size alone
    with pytest.raises(UnreadableFileError, match="folder"):
        read_bytes("memory://safety/folder.jpg")
    with pytest.raises(FileNotFoundError):
        read_bytes("memory://safety/missing.bin")

    def slow_cat(self, path, *args, **kwargs):
        time.sleep(1.5)
        return real_cat(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", slow_cat)
    started = time.monotonic()
    with pytest.raises(UnreadableFileError, match="did not finish"):
        read_bytes("memory://safety/big.bin", timeout_s=0.2)
    assert time.monotonic() - started < 1.0


def test_s3_gets_connect_and_read_timeouts_unless_the_options_set_them() -> None:
    fs, path = url_to_fs("s3://bucket/key.jpg", {"anon": True, "skip_instance_cache": True})
    assert path == "bucket/key.jpg"
    assert fs.config_kwargs["connect_timeout"] == storage.S3_CONNECT_TIMEOUT_S
    assert fs.config_kwargs["read_timeout"] == storage.S3_READ_TIMEOUT_S
    options = {"anon": True, "skip_instance_cache": True, "config_kwargs": {"read_timeout": 7}}
    fs, _ = url_to_fs("s3a://bucket/key.jpg", options)
    assert fs.config_kwargs["read_timeout"] == 7
    assert fs.config_kwargs["connect_timeout"] == storage.S3_CONNECT_TIMEOUT_S
    assert options["config_kwargs"] == {"read_timeout": 7}  # the caller's options untouched


def test_the_default_limit_fits_a_200_megapixel_16_bit_image() -> None:
    assert storage.DEFAULT_MAX_READ_BYTES >= 200_000_000 * 4 * 2
    assert 60 <= storage.DEFAULT_READ_TIMEOUT_S <= 600


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
    assert storage._current_umask() == 0o027

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(storage, "open", no_proc, raising=False)
    assert storage._current_umask() == 0o027
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


def test_a_folder_swapped_for_a_link_during_the_write_is_caught_before_the_rename(
    trees, monkeypatch, tmp_path
) -> None:
    source, dest = trees
    (dest / "sub").mkdir()
    staging = tmp_path / "staging"
    real_fsync = os.fsync

    def fsync_then_swap(descriptor: int) -> None:
        real_fsync(descriptor)
        (dest / "sub").rename(dest / "moved")
        (dest / "sub").symlink_to(source / "sub")

    monkeypatch.setattr(os, "fsync", fsync_then_swap)
    with pytest.raises(UnsafePathError):
        write_bytes_atomic(
            str(dest / "sub" / "b.jpg"),
            b"masked",
            staging_dir=str(staging),
            protected_root=str(source),
        )
    assert (source / "sub" / "b.jpg").read_bytes() == b"original b"
    assert list(staging.iterdir()) == []  # the temporary file is gone


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
