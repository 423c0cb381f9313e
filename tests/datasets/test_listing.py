"""Listing a dataset: every entry is an image or a skipped entry, and none stops or hangs a run."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import stat
import tempfile
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.formats import SNIFF_BYTES, SUFFIX_FORMATS
from anon_tasks.core.records import ImageRef, SkippedEntry
from anon_tasks.datasets.listing import file_fingerprints, list_source, scan_dataset
from anon_tasks.storage.locations import safe_relative_path
from tests.conftest import release_fifos

SCAN_SECONDS = 20.0
TEXT = b"a caption, not an image\n"


@pytest.fixture(scope="module")
def jpeg(astronaut_rgb) -> bytes:
    """A real, small JPEG of the astronaut photo."""
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb[::8, ::8].copy()).save(buffer, format="JPEG")
    return buffer.getvalue()


def scan(root: Path | str, seconds: float = SCAN_SECONDS) -> list[ImageRef | SkippedEntry]:
    """``scan_dataset`` in a thread: fails (instead of hanging) when it does not finish."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["entries"] = list(scan_dataset(str(root)))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        release_fifos(Path(root))
        worker.join(5)
        pytest.fail(f"scan_dataset did not finish within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["entries"]  # type: ignore[return-value]


def images_of(entries) -> dict[str, ImageRef]:
    return {e.relative_path: e for e in entries if isinstance(e, ImageRef)}


def skipped_of(entries) -> dict[str, str]:
    return {e.relative_path: e.reason for e in entries if isinstance(e, SkippedEntry)}


@contextmanager
def recorded_opens():
    """Every path ``os.open`` is called with, while the block runs."""
    real_open = os.open
    paths: list[bytes] = []

    def recording_open(path, flags, *args, **kwargs):
        paths.append(os.fsencode(path))
        return real_open(path, flags, *args, **kwargs)

    with mock.patch.object(os, "open", recording_open):
        yield paths


def write(path: Path, content: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# --- named cases -------------------------------------------------------------------------------


def test_symlink_loops_are_skipped_and_the_rest_is_listed(tmp_path) -> None:
    os.symlink("x.jpg", tmp_path / "x.jpg")
    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    write(tmp_path / "ok.jpg", b"1")
    entries = scan(tmp_path)
    assert list(images_of(entries)) == ["ok.jpg"]
    assert skipped_of(entries) == {
        "a.jpg": "link loop; not followed",
        "b.jpg": "link loop; not followed",
        "x.jpg": "link loop; not followed",
    }


def test_a_resolver_raising_runtime_error_on_loops_is_a_skip(tmp_path, monkeypatch) -> None:
    os.symlink("x.jpg", tmp_path / "x.jpg")

    real_realpath = os.path.realpath

    def raising(path, *, strict=False):
        if strict:  # resolving the link, not the root
            raise RuntimeError("Symlink loop from 'x.jpg'")  # as Path.resolve() in Python 3.11
        return real_realpath(path)

    monkeypatch.setattr(os.path, "realpath", raising)
    assert skipped_of(scan(tmp_path)) == {"x.jpg": "link loop; not followed"}


def test_dangling_link(tmp_path) -> None:
    os.symlink(tmp_path / "gone.jpg", tmp_path / "x.jpg")
    os.symlink(tmp_path / "file.txt" / "below", tmp_path / "y.jpg")  # ENOTDIR
    write(tmp_path / "file.txt", TEXT)
    assert skipped_of(scan(tmp_path)) == {
        "file.txt": "not an image (caption sidecar without an image)",
        "x.jpg": "dangling link (no target)",
        "y.jpg": "dangling link (no target)",
    }


def test_links_to_outside_the_source_are_skipped_unopened(tmp_path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.jpg", b"x")
    write(outside / "secret", b"\xff\xd8\xff\xe0")  # would be sniffed as a JPEG
    source = tmp_path / "source"
    write(source / "ok.jpg", b"y")
    os.symlink(outside / "secret.jpg", source / "link.jpg")
    os.symlink(outside / "secret", source / "IMG_0001")
    os.symlink(outside, source / "linked_dir")
    os.symlink("../outside/secret.jpg", source / "relative.jpg")
    with recorded_opens() as opened:
        entries = scan(source)
    assert list(images_of(entries)) == ["ok.jpg"]
    assert skipped_of(entries) == dict.fromkeys(
        ("IMG_0001", "link.jpg", "linked_dir", "relative.jpg"), "link to outside the source"
    )
    assert opened == []


def test_a_link_to_a_folder_is_not_descended(tmp_path) -> None:
    write(tmp_path / "real" / "face.jpg", b"1")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    os.symlink(".", tmp_path / "self")  # would list everything again, for ever
    entries = scan(tmp_path)
    assert list(images_of(entries)) == ["real/face.jpg"]
    assert skipped_of(entries) == {
        "alias": "link to a folder; not descended",
        "self": "link to a folder; not descended",
    }


def test_a_link_to_a_regular_file_inside_the_source_is_that_file(tmp_path, jpeg) -> None:
    target = write(tmp_path / "photos" / "face.jpg", jpeg)
    os.symlink(target, tmp_path / "same.jpg")
    os.symlink("photos/face.jpg", tmp_path / "IMG_0001")  # sniffed through the link
    images = images_of(scan(tmp_path))
    assert sorted(images) == ["IMG_0001", "photos/face.jpg", "same.jpg"]
    assert images["same.jpg"].size_bytes == len(jpeg)
    assert images["same.jpg"].fingerprint == images["photos/face.jpg"].fingerprint


def test_a_fifo_named_like_an_image_never_hangs_and_is_never_opened(tmp_path) -> None:
    os.mkfifo(tmp_path / "x.jpg")
    os.mkfifo(tmp_path / "IMG_0002")  # no image extension: would be sniffed if it were a file
    os.symlink("x.jpg", tmp_path / "link.jpg")
    write(tmp_path / "ok.jpg", b"1")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.jpg"))
        with recorded_opens() as opened:
            entries = scan(tmp_path, seconds=10)
    assert list(images_of(entries)) == ["ok.jpg"]
    assert skipped_of(entries) == {
        "IMG_0002": "a FIFO (named pipe), not a regular file",
        "link.jpg": "link to a FIFO (named pipe); not followed",
        "s.jpg": "a socket, not a regular file",
        "x.jpg": "a FIFO (named pipe), not a regular file",
    }
    assert opened == []


def test_names_that_are_not_utf8_are_skipped_with_escapes(tmp_path, caplog) -> None:
    root = os.fsencode(tmp_path)
    os.close(os.open(root + b"/caf\xe9.jpg", os.O_CREAT | os.O_WRONLY))
    os.mkdir(root + b"/d\xff")
    os.close(os.open(root + b"/d\xff/inside.jpg", os.O_CREAT | os.O_WRONLY))
    os.symlink(b"caf\xe9.jpg", root + b"/link\xfe.jpg")
    write(tmp_path / "ok.jpg", b"1")
    caplog.set_level("DEBUG", logger="anon_tasks.datasets.listing")
    entries = scan(tmp_path)
    assert list(images_of(entries)) == ["ok.jpg"]
    assert skipped_of(entries) == {
        "caf\\xe9.jpg": "file name is not valid UTF-8",
        "d\\xff": "folder name is not valid UTF-8; not descended",
        "link\\xfe.jpg": "file name is not valid UTF-8",
    }
    for entry in entries:
        entry.relative_path.encode("utf-8")  # strict: no surrogates left
        json.loads(entry.model_dump_json())
    assert "caf\\xe9.jpg" in caplog.text


def test_control_characters_and_backslashes_are_skipped_but_colons_and_unicode_are_not(
    tmp_path,
) -> None:
    names = ["a:b.jpg", "anna maría/foto 1.jpg", "zoë/портрет.webp", "sub/c:d.png", "ü.jpeg"]
    for name in names:
        write(tmp_path / name, b"1")
    write(tmp_path / "new\nline.jpg", b"1")
    write(tmp_path / "tab\t.jpg", b"1")
    write(tmp_path / "back\\slash.jpg", b"1")
    write(tmp_path / "del\x7f.jpg", b"1")
    entries = scan(tmp_path)
    assert sorted(images_of(entries)) == sorted(names)
    assert skipped_of(entries) == {
        "back\\slash.jpg": "file name contains a backslash",
        "del\\x7f.jpg": "file name contains a control character",
        "new\\x0aline.jpg": "file name contains a control character",
        "tab\\x09.jpg": "file name contains a control character",
    }
    for name in names:
        assert safe_relative_path(name) == name  # joins like any other name


def test_every_image_extension_is_an_image_without_being_read(tmp_path) -> None:
    for suffix in SUFFIX_FORMATS:
        write(tmp_path / f"img{suffix}", b"not really")
        write(tmp_path / f"up{suffix.upper()}", b"not really")
    write(tmp_path / "img.txt", TEXT)
    with recorded_opens() as opened:
        entries = scan(tmp_path)
    images = images_of(entries)
    assert {"img.jfif", "img.bmp", "img.heic", "up.JFIF", "up.BMP"} <= set(images)
    assert len(images) == 2 * len(SUFFIX_FORMATS)
    assert [s.relative_path for s in images["img.jfif"].sidecars] == ["img.txt"]
    assert skipped_of(entries) == {}
    assert opened == []  # a rerun over named images and their captions reads nothing


def test_extension_less_and_renamed_images_are_found_by_content(tmp_path, jpeg) -> None:
    write(tmp_path / "IMG_0001", jpeg)
    write(tmp_path / "IMG_0001.txt", TEXT)
    write(tmp_path / "photo.jpg.bak", jpeg)
    write(tmp_path / "photo.jpg.txt", TEXT)
    write(tmp_path / "README", TEXT)
    with recorded_opens() as opened:
        entries = scan(tmp_path)
    images = images_of(entries)
    assert sorted(images) == ["IMG_0001", "photo.jpg.bak"]
    assert [s.relative_path for s in images["IMG_0001"].sidecars] == ["IMG_0001.txt"]
    assert [s.relative_path for s in images["photo.jpg.bak"].sidecars] == ["photo.jpg.txt"]
    assert images["IMG_0001"].size_bytes == len(jpeg)
    assert skipped_of(entries) == {"README": "not an image (text)"}
    assert sorted(os.path.basename(p) for p in opened) == [b"IMG_0001", b"README", b"photo.jpg.bak"]


def test_other_files_are_skipped_with_what_they_are(tmp_path) -> None:
    write(tmp_path / "notes.dat", TEXT)
    write(tmp_path / "empty.dat")
    write(tmp_path / "doc.pdf", b"%PDF-1.7\n...")
    write(tmp_path / "clip.mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")
    write(tmp_path / "blob.bin", bytes(range(256)))
    write(tmp_path / "orphan.txt", TEXT)
    write(tmp_path / "orphan.json", b"{}")
    entries = scan(tmp_path)
    assert images_of(entries) == {}
    assert skipped_of(entries) == {
        "blob.bin": "not an image (unrecognised content)",
        "clip.mp4": "not an image (ISO media, e.g. a video)",
        "doc.pdf": "not an image (PDF)",
        "empty.dat": "not an image (empty file)",
        "notes.dat": "not an image (text)",
        "orphan.json": "not an image (caption sidecar without an image)",
        "orphan.txt": "not an image (caption sidecar without an image)",
    }
    assert all(e.fingerprint.startswith("size:") for e in entries)


def test_an_image_under_a_caption_name_keeps_the_other_captions(tmp_path, jpeg) -> None:
    write(tmp_path / "scan.txt", jpeg)
    write(tmp_path / "scan.json", b'{"caption": "x"}')
    images = images_of(scan(tmp_path))
    assert list(images) == ["scan.txt"]
    assert [s.relative_path for s in images["scan.txt"].sidecars] == ["scan.json"]


def test_hidden_files_are_said_and_a_hidden_folder_once(tmp_path) -> None:
    write(tmp_path / ".DS_Store", b"x")
    write(tmp_path / ".git" / "objects" / "a.jpg", b"1")
    write(tmp_path / ".git" / "b.jpg", b"1")
    write(tmp_path / "sub" / ".thumb.jpg", b"1")
    write(tmp_path / "sub" / "ok.jpg", b"1")
    entries = scan(tmp_path)
    assert list(images_of(entries)) == ["sub/ok.jpg"]
    assert skipped_of(entries) == {
        ".DS_Store": "hidden file",
        ".git": "hidden folder, not descended",
        "sub/.thumb.jpg": "hidden file",
    }
    assert len(entries) == 4


def test_a_caption_that_is_a_link_is_never_a_sidecar(tmp_path, jpeg) -> None:
    source = tmp_path / "source"
    write(source / "x.jpg", jpeg)
    write(source / "x.json", b"{}")
    os.symlink("x.jpg", source / "x.txt")  # would copy an unmasked image into dest
    os.symlink(write(tmp_path / "secret.txt", TEXT), source / "x.caption")
    entries = scan(source)
    images = images_of(entries)
    assert [s.relative_path for s in images["x.jpg"].sidecars] == ["x.json"]
    skipped = skipped_of(entries)
    assert skipped["x.txt"] == "sidecar is a link; not copied"
    assert skipped["x.caption"] == "link to outside the source"


def test_a_sidecar_interleaved_with_a_subfolder_still_groups(tmp_path) -> None:
    write(tmp_path / "a.jpg", b"1")
    write(tmp_path / "a.k" / "x.jpg", b"1")  # sorts between a.jpg and a.txt
    write(tmp_path / "a.txt", TEXT)
    entries = scan(tmp_path)
    assert [e.relative_path for e in entries] == ["a.jpg", "a.k/x.jpg"]
    assert [s.relative_path for s in entries[0].sidecars] == ["a.txt"]


def test_entries_come_in_path_order(tmp_path) -> None:
    for name in ["b.jpg", "a/z.jpg", "a.jpg", "a-b/c.png", "A.png", "c/.h", "a/b/c.jpg", "é.jpg"]:
        write(tmp_path / name, b"1")
    paths = [e.relative_path for e in scan(tmp_path)]
    assert paths == sorted(paths)
    assert [i.relative_path for i in list_source(str(tmp_path))[0]] == [
        "A.png",
        "a-b/c.png",
        "a.jpg",
        "a/b/c.jpg",
        "a/z.jpg",
        "b.jpg",
        "é.jpg",
    ]


def test_a_missing_source_raises_but_a_missing_dest_has_no_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "nope")
    assert file_fingerprints(str(tmp_path / "nope")) == {}


def test_file_fingerprints_leave_out_bad_entries(tmp_path) -> None:
    root = os.fsencode(tmp_path)
    write(tmp_path / "a.jpg", b"1")
    write(tmp_path / "a.txt", TEXT)
    write(tmp_path / "_anonymize" / "manifest.jsonl", b"")
    write(tmp_path / ".anon-tmp-123", b"partial")
    os.mkfifo(tmp_path / "f.jpg")
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    os.close(os.open(root + b"/caf\xe9.jpg", os.O_CREAT | os.O_WRONLY))
    os.symlink("a.jpg", tmp_path / "same.jpg")
    with recorded_opens() as opened:
        found = file_fingerprints(str(tmp_path), skip_dir="_anonymize")
    assert sorted(found) == ["a.jpg", "a.txt", "same.jpg"]
    assert found["same.jpg"] == found["a.jpg"]
    assert opened == []


def test_an_unreadable_folder_is_a_skip(tmp_path, monkeypatch) -> None:
    write(tmp_path / "locked" / "a.jpg", b"1")
    write(tmp_path / "ok.jpg", b"1")
    real_scandir = os.scandir

    def refusing(path):
        if os.fsencode(path).endswith(b"locked"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    entries = scan(tmp_path)
    assert list(images_of(entries)) == ["ok.jpg"]
    assert skipped_of(entries) == {
        "locked": "folder cannot be listed (Permission denied); not descended"
    }


# --- object stores (fsspec's memory filesystem; S3 itself in test_s3.py) ----------------------


@pytest.fixture
def memory_root():
    fs = fsspec.filesystem("memory")
    root = f"/listing-{uuid.uuid4().hex}"
    yield fs, root
    fs.rm(root, recursive=True)


def test_remote_classification_from_the_listing(memory_root, jpeg, monkeypatch) -> None:
    fs, root = memory_root
    objects = {
        "a.jpg": b"1",
        "a.k/x.png": b"1",
        "a.txt": TEXT,
        "IMG_0001": jpeg,
        "IMG_0001 2/notes.dat": TEXT,
        "IMG_0001.txt": TEXT,
        "pic.jfif": b"1",
        "pic.bmp": b"1",
        ".cache/a.jpg": b"1",
        ".cache/b.jpg": b"1",
        "sub/.h/c.jpg": b"1",
        "sub/.DS_Store": b"1",
        "a//double.jpg": b"1",
        "x/../escape.jpg": b"1",
        "new\nline.jpg": b"1",
        "back\\slash.jpg": b"1",
        "empty": b"",
    }
    for key, content in objects.items():
        fs.pipe(f"{root}/{key}", content)
    reads: list[tuple[str, int | None, int | None]] = []
    real_cat_file = type(fs).cat_file

    def recording_cat_file(self, path, start=None, end=None, **kwargs):
        reads.append((path.rsplit("/", 1)[-1], start, end))
        return real_cat_file(self, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(type(fs), "cat_file", recording_cat_file)
    entries = list(scan_dataset(f"memory://{root}"))
    images = images_of(entries)
    assert sorted(images) == ["IMG_0001", "a.jpg", "a.k/x.png", "pic.bmp", "pic.jfif"]
    assert [s.relative_path for s in images["a.jpg"].sidecars] == ["a.txt"]
    assert [s.relative_path for s in images["IMG_0001"].sidecars] == ["IMG_0001.txt"]
    assert skipped_of(entries) == {
        ".cache": "hidden folder, not descended",
        "IMG_0001 2/notes.dat": "not an image (text)",
        "a/": "folder name '' is not a plain name; not descended",
        "back\\slash.jpg": "file name contains a backslash",
        "empty": "not an image (empty file)",
        "new\\x0aline.jpg": "file name contains a control character",
        "sub/.DS_Store": "hidden file",
        "sub/.h": "hidden folder, not descended",
        "x/..": "folder name '..' is not a plain name; not descended",
    }
    # One ranged read of the first bytes per file without an image extension; none for empty.
    assert sorted(reads) == [("IMG_0001", 0, SNIFF_BYTES), ("notes.dat", 0, len(TEXT))]
    assert all(safe_relative_path(path) for path in images)


def test_remote_dest_fingerprints_leave_out_bad_keys(memory_root) -> None:
    fs, root = memory_root
    for key in ["a.jpg", "_anonymize/manifest.jsonl", ".h/x.jpg", "a//b.jpg", "n\n.jpg"]:
        fs.pipe(f"{root}/{key}", b"1")
    assert sorted(file_fingerprints(f"memory://{root}", skip_dir="_anonymize")) == ["a.jpg"]


# Stems, folders and suffixes chosen so that keys of one stem interleave with others.
REMOTE_STEMS = ["a", "a.k", "a-1", "a.b", "IMG", "b"]
REMOTE_FOLDERS = ["", "a/", "a.k/", "a-b/", "a.jpg.d/"]
REMOTE_SUFFIXES = [".jpg", ".png", ".txt", ".json"]


@settings(max_examples=50, deadline=None)
@given(
    keys=st.sets(
        st.tuples(
            st.sampled_from(REMOTE_FOLDERS),
            st.sampled_from(REMOTE_STEMS),
            st.sampled_from(REMOTE_SUFFIXES),
        ),
        min_size=1,
        max_size=16,
    )
)
def test_remote_grouping_matches_grouping_the_whole_listing(keys) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/group-{uuid.uuid4().hex}"
    for folder, stem, suffix in keys:
        fs.pipe(f"{root}/{folder}{stem}{suffix}", TEXT)
    try:
        entries = list(scan_dataset(f"memory://{root}"))
    finally:
        fs.rm(root, recursive=True)
    expected_images = {}
    expected_skipped = set()
    for folder, stem, suffix in keys:
        if suffix in (".jpg", ".png"):
            captions = sorted(
                f"{folder}{stem}{s}"
                for f, t, s in keys
                if (f, t) == (folder, stem) and s in {".txt", ".json"}
            )
            expected_images[f"{folder}{stem}{suffix}"] = captions
        elif not any((f, t) == (folder, stem) and s in {".jpg", ".png"} for f, t, s in keys):
            expected_skipped.add(f"{folder}{stem}{suffix}")
    images = images_of(entries)
    assert {p: [s.relative_path for s in i.sidecars] for p, i in images.items()} == (
        expected_images
    )
    assert set(skipped_of(entries)) == expected_skipped
    assert len(entries) == len(expected_images) + len(expected_skipped)
    paths = [e.relative_path for e in entries]
    assert paths == sorted(paths)


# --- generated source trees --------------------------------------------------------------------

FOLDERS = [b"", b"sub", b"sub/deep", b"a.k", b".hid", b"bad\xff", b"ctl\x01"]
STEMS = [b"a", b"IMG_1", b"b c", b"\xc3\xbc", b"a:b", b"x\xff", b".h", b"n\nl", b"b\\s"]
SUFFIXES = [b".jpg", b".JFIF", b".bmp", b".txt", b".json", b".dat", b"", b".jpg.bak"]
KINDS = [
    "jpeg",
    "jpeg",
    "text",
    "text",
    "empty",
    "fifo",
    "loop",
    "loop_pair",
    "chain",
    "dangling",
    "outside",
    "folder_link",
    "file_link",
]
ENTRY = st.tuples(st.sampled_from(FOLDERS), st.sampled_from(STEMS), st.sampled_from(SUFFIXES))


def _clean(name: bytes) -> bool:
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not text.startswith(".") and "\\" not in text and all(ord(c) >= 32 for c in text)


def _display(path: bytes) -> str:
    text = path.decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text)


def _build(root: bytes, outside: bytes, jpeg: bytes, spec) -> dict[bytes, str]:
    """Create the tree; returns every entry made (relative bytes path -> kind)."""
    made: dict[bytes, str] = {}
    anchor = b"anchor.jpg"
    with open(os.path.join(root, anchor), "wb") as file:
        file.write(jpeg)
    made[anchor] = "jpeg"
    for (folder, stem, suffix), kind in spec:
        relative = os.path.join(folder, stem + suffix) if folder else stem + suffix
        if relative in made or any(relative.startswith(m + b"/") for m in made):
            continue
        if any(m.startswith(relative + b"/") for m in made):
            continue  # a folder of that name exists
        os.makedirs(os.path.join(root, folder) if folder else root, exist_ok=True)
        path = os.path.join(root, relative)
        extra: dict[bytes, str] = {}
        if kind in ("jpeg", "text", "empty"):
            content = {"jpeg": jpeg, "text": TEXT, "empty": b""}[kind]
            with open(path, "wb") as file:
                file.write(content)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "loop":
            os.symlink(stem + suffix, path)
        elif kind in ("loop_pair", "chain"):
            hop = relative + b".hop"
            if hop in made:
                continue
            os.symlink(os.path.basename(hop), path)
            target = (
                os.path.basename(relative) if kind == "loop_pair" else os.path.join(root, anchor)
            )
            os.symlink(target, os.path.join(root, hop))
            extra[hop] = kind
        elif kind == "dangling":
            os.symlink(b"no-such-file", path)
        elif kind == "outside":
            os.symlink(outside, path)
        elif kind == "folder_link":
            os.makedirs(os.path.join(root, b"sub"), exist_ok=True)
            os.symlink(os.path.join(root, b"sub"), path)
        else:  # file_link
            os.symlink(os.path.join(root, anchor), path)
        made[relative] = kind
        made.update(extra)
    return made


def _visible(relative: bytes) -> bytes | None:
    """The path a listing must report for an entry: itself, its first hidden or bad folder,
    or None when it lies in a folder reached only through a link."""
    parts = relative.split(b"/")
    for index, part in enumerate(parts[:-1]):
        if not _clean(part):
            return b"/".join(parts[: index + 1])
    return relative


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=st.lists(st.tuples(ENTRY, st.sampled_from(KINDS)), min_size=1, max_size=14))
def test_generated_trees_are_listed_completely_safely_and_quickly(spec, jpeg) -> None:
    with tempfile.TemporaryDirectory() as temp:
        base = os.fsencode(temp)
        root = os.path.join(base, b"source")
        os.mkdir(root)
        outside = os.path.join(base, b"outside.jpg")
        with open(outside, "wb") as file:
            file.write(jpeg)
        made = _build(root, outside, jpeg, spec)
        fifos = {os.path.join(root, r) for r, kind in made.items() if kind == "fifo"}
        with recorded_opens() as opened:
            entries = scan(os.fsdecode(root), seconds=SCAN_SECONDS)

        # Complete, each entry exactly once: as an image, a skipped entry, or a sidecar.
        primary = Counter(e.relative_path for e in entries)
        sidecars = {s.relative_path for e in entries if isinstance(e, ImageRef) for s in e.sidecars}
        assert all(count == 1 for count in primary.values()), primary
        assert not sidecars & set(primary)
        expected = {_display(_visible(r)) for r in made}
        assert set(primary) | sidecars == expected

        # Safe names, in path order.
        for entry in entries:
            entry.relative_path.encode("utf-8")
            assert not any(ord(c) < 32 for c in entry.relative_path)
            json.loads(entry.model_dump_json())
            if isinstance(entry, ImageRef):
                assert safe_relative_path(entry.relative_path)
        images = images_of(entries)
        assert list(images) == sorted(images)

        # Nothing but regular files opened; no FIFO, no link, and few reads.
        assert not fifos & set(opened)
        for path in opened:
            assert stat.S_ISREG(os.lstat(path).st_mode), path
        named = {r for r in made if os.path.splitext(r)[1].lower().decode() in SUFFIX_FORMATS}
        assert len(opened) <= len(made) - len(named)

        # What each kind becomes.
        skipped = skipped_of(entries)
        for relative, kind in made.items():
            shown = _display(relative)
            if _visible(relative) != relative or not _clean(os.path.basename(relative)):
                assert shown not in images
                continue
            if kind == "jpeg":
                assert shown in images or shown in sidecars, (shown, skipped.get(shown))
            if kind == "file_link":  # a link to a JPEG inside the source: an image, or refused
                assert shown in images or skipped[shown] == "sidecar is a link; not copied"
            if kind in ("fifo", "loop", "loop_pair", "dangling", "outside", "folder_link"):
                assert shown in skipped, shown
        for path in sidecars:
            assert stat.S_ISREG(os.lstat(os.path.join(root, os.fsencode(path))).st_mode)
