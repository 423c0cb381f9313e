"""Invariants 11 and 12 at the command line: mistakes get exit code 2 and one line, outputs
are written in the format their name says, and files are readable as the umask allows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from anon_tasks import cli

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def photo(tmp_path, astronaut_rgb) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    path = folder / "a.jpg"
    Image.fromarray(astronaut_rgb[::2, ::2].copy()).save(path, quality=90)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_dest_that_is_a_file_is_refused(photo, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main([str(photo.parent), str(blocker)]) == 2
    assert "dest" in one_line_error(capsys)
    assert cli.main([str(photo.parent), str(blocker / "below")]) == 2
    assert "dest" in one_line_error(capsys)


def test_single_file_into_an_existing_folder_is_refused(photo, tmp_path, capsys) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli.main([str(photo), str(folder)]) == 2
    assert "folder" in one_line_error(capsys)


def test_missing_source_is_refused(tmp_path, capsys) -> None:
    assert cli.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "source" in one_line_error(capsys)


@pytest.mark.parametrize(("name", "fmt"), [("out.png", "PNG"), ("out.webp", "WEBP")])
def test_output_is_written_in_the_format_its_name_says(photo, tmp_path, name, fmt) -> None:
    out = tmp_path / name
    assert cli.main([str(photo), str(out), "--device", "cpu"]) == 0
    with Image.open(out) as written:
        assert written.format == fmt


def test_unknown_output_extension_is_refused(photo, tmp_path, capsys) -> None:
    assert cli.main([str(photo), str(tmp_path / "out.xyz")]) == 2
    one_line_error(capsys)
    assert not (tmp_path / "out.xyz").exists()


def test_colon_in_a_name_is_processed(tmp_path, astronaut_rgb) -> None:
    source = tmp_path / "raw"
    source.mkdir()
    Image.fromarray(astronaut_rgb[::2, ::2].copy()).save(source / "a:b.jpg", quality=90)
    assert cli.main([str(source), str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "a:b.jpg").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(photo, tmp_path, umask) -> None:
    """As ``cp`` does: a training job running as another user can read what the umask allows."""
    dest = tmp_path / f"out-{umask:o}"
    (photo.parent / "a.txt").write_text("a person\n")
    previous = os.umask(umask)
    try:
        code = cli.main([str(photo.parent), str(dest), "--device", "cpu"])
    finally:
        os.umask(previous)
    assert code == 0
    expected = 0o666 & ~umask
    for path in [dest / "a.jpg", dest / "a.txt", dest / "_anonymize" / "manifest.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
