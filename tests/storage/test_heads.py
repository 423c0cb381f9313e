"""Reading a file's head: regular files only, never blocking, never following a link."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from anon_tasks.core.errors import UnreadableFileError
from anon_tasks.storage.heads import read_local_head, read_object_head
from tests.conftest import release_fifos


def _os_error(function, *args) -> int | None:
    """The ``errno`` of the ``OSError`` that ``function(*args)`` raises (failing if none)."""
    try:
        function(*args)
    except UnreadableFileError:
        raise
    except OSError as exc:
        return exc.errno
    pytest.fail("no OSError raised")


def test_a_fifo_swapped_in_after_listing_is_refused_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "IMG_0003")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_local_head(os.fsencode(tmp_path / "IMG_0003"), 16)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        release_fifos(tmp_path)
        pytest.fail("reading the head of a FIFO blocked")
    assert len(outcome) == 1
    assert isinstance(outcome[0], UnreadableFileError)


def test_devices_folders_sockets_and_links_are_refused(tmp_path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for path in ("/dev/null", str(folder)):
        with pytest.raises(UnreadableFileError, match="not a regular file"):
            read_local_head(path, 4)
    sock_path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert _os_error(read_local_head, str(sock_path), 4) == errno.ENXIO  # never opened
    (tmp_path / "real.jpg").write_bytes(b"abc")
    (tmp_path / "link.jpg").symlink_to("real.jpg")  # a link swapped in after listing
    assert _os_error(read_local_head, str(tmp_path / "link.jpg"), 4) == errno.ELOOP


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 5000), limit=st.integers(0, 5000), seed=st.binary(min_size=1))
def test_the_head_is_the_first_bytes_whatever_the_size(size, limit, seed) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.bin"
        content = (seed * (size // len(seed) + 1))[:size]
        path.write_bytes(content)
        assert read_local_head(str(path), limit) == content[:limit]
        assert read_local_head(os.fsencode(path), limit) == content[:limit]


def test_an_object_head_is_one_ranged_read_and_an_empty_object_none(monkeypatch) -> None:
    memory = MemoryFileSystem()
    memory.pipe("/heads/big.bin", b"z" * 4096)
    memory.pipe("/heads/empty.bin", b"")
    fetched: list[tuple[str, int | None, int | None]] = []
    real_cat = MemoryFileSystem.cat_file

    def counting_cat(self, path, start=None, end=None, **kwargs):
        fetched.append((path, start, end))
        return real_cat(self, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", counting_cat)
    assert read_object_head(memory, "/heads/big.bin", 4096, 10) == b"z" * 10
    assert read_object_head(memory, "/heads/big.bin", 4096, 10_000) == b"z" * 4096
    assert read_object_head(memory, "/heads/empty.bin", 0, 10) == b""
    assert fetched == [("/heads/big.bin", 0, 10), ("/heads/big.bin", 0, 4096)]
