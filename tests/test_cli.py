"""The ``anonymize`` command on a real folder: summary, exit codes, refusals."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from anon_tasks import cli

pytestmark = pytest.mark.usefixtures("prefect_api")


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
    assert summary["images_inferred"] == 2
    assert (dest / "_anonymize" / "manifest.jsonl").exists()
    outputs = [p for p in dest.rglob("*") if p.is_file() and "_anonymize" not in p.parts]
    assert sorted(p.relative_to(dest).as_posix() for p in outputs) == [
        "a.png",
        "nested/b.jpg",
    ]


def test_failures_give_exit_code_one_and_are_listed(dataset, tmp_path, capsys) -> None:
    (dataset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = cli.main([str(dataset), str(tmp_path / "out"), "--json"])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_failed"] == 1
    assert summary["failed_images"] == ["broken.png"]
    assert not (tmp_path / "out" / "broken.png").exists()


@pytest.mark.parametrize("inside", ["", "sub"])
def test_dest_inside_source_is_refused(dataset, inside: str) -> None:
    dest = os.path.join(dataset, inside) if inside else str(dataset)
    assert cli.main([str(dataset), dest]) == 2


def test_single_file_takes_the_library_path(dataset, tmp_path, capsys) -> None:
    dest = tmp_path / "one.png"
    assert cli.main([str(dataset / "a.png"), str(dest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["faces_found"] == 1
    assert dest.exists()


def test_rerun_with_another_method_runs_no_inference(dataset, tmp_path, capsys) -> None:
    dest = str(tmp_path / "out")
    assert cli.main([str(dataset), dest, "--json"]) == 0
    capsys.readouterr()
    assert cli.main([str(dataset), dest, "--json", "--method", "mosaic"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images_inferred"] == 0
    assert summary["images_written"] == 2


def test_bad_value_is_a_configuration_error(dataset, tmp_path, caplog) -> None:
    assert cli.main([str(dataset), str(tmp_path / "out"), "--threshold", "1.5"]) == 2
    assert "threshold=1.5" in caplog.text


def test_unknown_method_is_refused_by_the_parser(dataset, tmp_path) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([str(dataset), str(tmp_path / "out"), "--method", "pixelate"])
    assert caught.value.code == 2
