"""Bounded reads: only regular files, never past a size, never longer than a time."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from anon_tasks.core.errors import UnreadableFileError
from anon_tasks.storage import reads
from anon_tasks.storage.reads import read_bytes


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


@pytest.mark.parametrize("reader", [read_bytes])
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
    real = reads._read_descriptor
    monkeypatch.setattr(reads, "_read_descriptor", lambda *args: time.sleep(1.5) or real(*args))
    started = time.monotonic()
    with pytest.raises(UnreadableFileError, match=r"did not finish within 0\.2 s"):
        read_bytes(str(path), timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    monkeypatch.setattr(reads, "_read_descriptor", real)
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


def test_the_default_limit_fits_a_200_megapixel_16_bit_image() -> None:
    assert reads.DEFAULT_MAX_READ_BYTES >= 200_000_000 * 4 * 2
