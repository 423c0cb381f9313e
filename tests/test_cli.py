"""The ``anonymize`` command on a real folder: summary, exit codes, refusals."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from anon_tasks import cli


@pytest.fixture
def dataset(tmp_path, astronaut_rgb):
    source = tmp_path / "data"
    (source / "nested").mkdir(parents=True)
    Image.fromarray(astronaut_rgb).save(source / "a.png")
    Image.fromarray(astronaut_rgb).save(source / "nested" / "b.jpg", quality=90)
    (source / "nested" / "notes.md").write_text("not an image")
    return source


def test_folder_json_summary(dataset, tmp_path, capsys) -> None:
    dest = tmp_path / "out"
    code = cli.main([str(dataset), str(dest), "--method", "solid", "--json", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_total"] == summary["images_written"] == 2
    assert summary["faces_found"] == 2
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "a.png",
        "nested/b.jpg",
    ]


def test_failures_give_exit_code_one_and_are_listed(dataset, tmp_path, capsys) -> None:
    (dataset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = cli.main([str(dataset), str(tmp_path / "out"), "--json"])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_failed"] == 1
    assert "broken.png" in summary["failures"][0]
    assert not (tmp_path / "out" / "broken.png").exists()


@pytest.mark.parametrize("inside", ["", "sub"])
def test_dest_inside_source_is_refused(dataset, inside: str) -> None:
    dest = os.path.join(dataset, inside) if inside else str(dataset)
    assert cli.main([str(dataset), dest]) == 2


def test_bad_value_is_a_configuration_error(dataset, tmp_path, caplog) -> None:
    assert cli.main([str(dataset), str(tmp_path / "out"), "--threshold", "1.5"]) == 2
    assert "threshold=1.5" in caplog.text


def test_unknown_method_is_refused_by_the_parser(dataset, tmp_path) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([str(dataset), str(tmp_path / "out"), "--method", "pixelate"])
    assert caught.value.code == 2
