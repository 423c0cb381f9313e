"""The anonymize-dataset flow against a real Prefect API: outputs, manifest, reruns, UI schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect import flow
from prefect.utilities.callables import parameter_schema

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.records import ManifestRow, RunSummary
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    RunSettings,
)
from anon_tasks.detection.detector import SCORE_FLOOR
from anon_tasks.flows import anonymize_dataset

pytestmark = pytest.mark.usefixtures("prefect_api")

RUN = RunSettings(shard_size=2, caption_note="faces are blurred")
CPU = DetectionSettings(device="cpu")


@pytest.fixture
def dataset(tmp_path, astronaut_rgb, camera_gray) -> Path:
    """Six real photos in nested folders, one caption sidecar and one corrupt file."""
    source = tmp_path / "raw"
    (source / "people" / "more").mkdir(parents=True)
    Image.fromarray(astronaut_rgb).save(source / "astronaut.png")
    Image.fromarray(camera_gray).save(source / "people" / "camera.png")
    Image.fromarray(astronaut_rgb[::-1].copy()).save(source / "people" / "flipped.jpg", quality=92)
    Image.fromarray(np.roll(astronaut_rgb, 100, axis=1)).save(source / "people/more/rolled.webp")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0)})
    Image.fromarray(astronaut_rgb).transpose(Image.Transpose.ROTATE_90).save(
        source / "people" / "phone.jpg", quality=95, exif=exif
    )
    from skimage import data

    Image.fromarray(data.coffee()).save(source / "coffee.jpg", quality=90)
    (source / "astronaut.txt").write_text("an astronaut in a suit\n")
    (source / "people" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (source / "notes.md").write_text("not an image")
    return source


def run(source: Path, dest: Path, **kwargs) -> RunSummary:
    kwargs.setdefault("detection", CPU)
    kwargs.setdefault("run", RUN.model_copy(update={"allow_failures": True}))
    return anonymize_dataset(str(source), str(dest), **kwargs)


def manifest(dest: Path) -> list[dict]:
    lines = (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def output_times(dest: Path) -> dict[str, int]:
    return {
        p.relative_to(dest).as_posix(): p.stat().st_mtime_ns
        for p in dest.rglob("*")
        if p.is_file() and "_anonymize" not in p.parts
    }


def test_first_run_writes_every_image_and_a_manifest(dataset, tmp_path) -> None:
    dest = tmp_path / "clean"
    summary = run(dataset, dest)
    assert summary.images_total == 7
    assert summary.images_written == 6
    assert summary.images_failed == 1
    assert summary.failed_images == ("people/broken.png",)
    assert summary.images_inferred == 6
    assert summary.faces_found >= 5  # five astronauts and the cameraman
    assert summary.shards >= 2
    written = sorted(output_times(dest))
    assert written == [
        "astronaut.png",
        "astronaut.txt",
        "coffee.jpg",
        "people/camera.png",
        "people/flipped.jpg",
        "people/more/rolled.webp",
        "people/phone.jpg",
    ]
    assert (dest / "astronaut.txt").read_text() == "an astronaut in a suit, faces are blurred\n"
    rows = manifest(dest)
    assert [row["source"] for row in rows] == sorted(row["source"] for row in rows)
    assert len(rows) == 8
    assert [row["source"] for row in rows if row["status"] == "skipped"] == ["notes.md"]
    for row in rows:
        ManifestRow.model_validate(row)
        assert row["model_sha256"]
        assert row["package_version"]
        assert row["source_fingerprint"]
        assert row["parameters"]["method"] == "blur"
        assert row["parameters"]["threshold"] == 0.4
    by_source = {row["source"]: row for row in rows}
    assert by_source["people/broken.png"]["status"] == "failed"
    assert by_source["people/broken.png"]["output"] is None
    assert "broken.png" in by_source["people/broken.png"]["error"]
    assert by_source["coffee.jpg"]["faces"] == []
    # The phone photo's face is reported in upright pixels, where the astronaut's face is.
    (phone_face,) = by_source["people/phone.jpg"]["faces"]
    x1, y1, x2, y2 = phone_face["box"]
    assert abs(x1 - 181.5) < 4
    assert abs(y1 - 58.2) < 4
    assert abs(x2 - 269.9) < 4
    assert abs(y2 - 177.8) < 4
    assert phone_face["score"] > 0.4
    with Image.open(dest / "people" / "phone.jpg") as phone:
        assert not phone.getexif()  # no GPS, no orientation
    assert not list(dest.rglob(".anon-tmp-*"))


def test_largest_shards_are_detected_first(dataset, tmp_path, monkeypatch) -> None:
    """The smallest shard goes last: its masking and writing are what no detection overlaps."""
    from anon_tasks.orchestration import detection_task

    sizes: list[int] = []
    real_detect_images = detection_task.detect_images

    def recording(detector, source, images, *args, **kwargs):
        sizes.append(len(images))
        return real_detect_images(detector, source, images, *args, **kwargs)

    monkeypatch.setattr(detection_task, "detect_images", recording)
    run(dataset, tmp_path / "out", run=RunSettings(shard_size=3, allow_failures=True))
    assert sum(sizes) == 7  # six photos and the broken file
    assert len(set(sizes)) > 1  # shards of several sizes, so the order is really tested
    assert sizes == sorted(sizes, reverse=True)


def test_failures_end_the_run_failed_naming_the_files(dataset, tmp_path) -> None:
    state = anonymize_dataset(str(dataset), str(tmp_path / "out"), CPU, run=RUN, return_state=True)
    assert state.is_failed()
    assert "people/broken.png" in state.message
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary)
    assert summary.images_written == 6  # every good image was finished first


def test_same_inputs_and_parameters_read_and_infer_nothing(dataset, tmp_path) -> None:
    dest = tmp_path / "clean"
    run(dataset, dest)
    before = output_times(dest)
    again = run(dataset, dest)
    assert again.images_read == 0
    assert again.images_inferred == 0
    assert again.images_unchanged == 6
    assert again.images_written == 0
    assert output_times(dest) == before  # outputs untouched


@pytest.mark.parametrize(
    "masking",
    [
        MaskSettings(method=AnonymizeMethod.MOSAIC),
        MaskSettings(method=AnonymizeMethod.SOLID, mask_scale=1.3),
        MaskSettings(ellipse=False),
        MaskSettings(method=AnonymizeMethod.MOSAIC, mosaic_size=8),
    ],
)
def test_mask_changes_rerun_without_inference(dataset, tmp_path, masking) -> None:
    dest = tmp_path / "clean"
    first = run(dataset, dest)
    before = np.asarray(Image.open(dest / "astronaut.png"))
    again = run(dataset, dest, masking=masking)
    assert again.images_inferred == 0
    assert again.images_written == 6
    assert again.faces_found == first.faces_found
    assert not np.array_equal(np.asarray(Image.open(dest / "astronaut.png")), before)
    assert {row["parameters"]["method"] for row in manifest(dest)} == {masking.method.value}


def test_threshold_changes_rerun_without_inference(dataset, tmp_path) -> None:
    dest = tmp_path / "clean"
    first = run(dataset, dest)
    lower = run(dataset, dest, detection=DetectionSettings(device="cpu", threshold=0.1))
    higher = run(dataset, dest, detection=DetectionSettings(device="cpu", threshold=0.95))
    assert lower.images_inferred == higher.images_inferred == 0
    assert lower.faces_found >= first.faces_found > higher.faces_found
    for row in manifest(dest):
        assert all(face["score"] > 0.95 for face in row["faces"])


def test_a_threshold_below_the_floor_is_served_by_a_new_inference(dataset, tmp_path) -> None:
    """Stored detections stop at SCORE_FLOOR; a lower threshold must not silently mask only
    the faces above the floor."""
    dest = tmp_path / "clean"
    run(dataset, dest)
    low = run(dataset, dest, detection=DetectionSettings(device="cpu", threshold=0.03))
    assert low.images_inferred == 6  # every decodable image
    scores = [face["score"] for row in manifest(dest) for face in row["faces"]]
    assert min(scores) > 0.03
    assert any(score <= SCORE_FLOOR for score in scores)


def test_added_and_changed_images_are_the_only_ones_inferred(
    dataset, tmp_path, astronaut_rgb
) -> None:
    dest = tmp_path / "clean"
    run(dataset, dest)
    Image.fromarray(astronaut_rgb[:, ::-1].copy()).save(dataset / "people" / "mirror.png")
    Image.fromarray(astronaut_rgb[:300]).save(dataset / "new.png")
    Image.fromarray(np.roll(astronaut_rgb, 7, axis=0)).save(dataset / "astronaut.png")  # in place
    again = run(dataset, dest)
    assert again.images_inferred == 3
    assert again.images_written == 3
    assert again.images_unchanged == 5


def test_deleted_output_is_written_again(dataset, tmp_path) -> None:
    dest = tmp_path / "clean"
    run(dataset, dest)
    (dest / "people" / "camera.png").unlink()
    again = run(dataset, dest)
    assert again.images_inferred == 0
    assert again.images_read == 1
    assert again.images_written == 1
    assert (dest / "people" / "camera.png").exists()


def test_source_is_never_modified(dataset, tmp_path) -> None:
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    run(dataset, tmp_path / "clean")
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("inside", [".", "sub/out"])
def test_dest_inside_source_is_refused_before_any_work(dataset, inside: str) -> None:
    dest = dataset / inside
    with pytest.raises(ConfigurationError, match="source"):
        run(dataset, dest)
    assert not (dataset / "_anonymize").exists()
    assert not (dataset / "sub").exists()


def test_malformed_device_slots_fail_the_run_before_any_work(
    dataset, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("ANON_TASKS_DEVICE_SLOTS", "many")
    with pytest.raises(ConfigurationError, match="ANON_TASKS_DEVICE_SLOTS"):
        run(dataset, tmp_path / "clean")
    assert not (tmp_path / "clean").exists()


def test_callable_as_a_subflow_of_a_users_flow(dataset, tmp_path) -> None:
    @flow
    def prepare_training_data(raw: str, clean: str) -> int:
        summary = anonymize_dataset(raw, clean, CPU, run=RunSettings(allow_failures=True))
        return summary.faces_found

    assert prepare_training_data(str(dataset), str(tmp_path / "clean")) >= 5


def test_ui_form_schema_has_the_method_dropdown_and_descriptions() -> None:
    schema = parameter_schema(anonymize_dataset.fn).model_dump()
    definitions = schema["definitions"]
    assert definitions["AnonymizeMethod"]["enum"] == ["blur", "solid", "mosaic", "none"]
    assert schema["properties"]["masking"]["default"]["method"] == "blur"
    for model in ("DetectionSettings", "MaskSettings", "OutputSettings", "RunSettings"):
        for name, field in definitions[model]["properties"].items():
            assert field.get("description"), f"{model}.{name} has no description"
    threshold = definitions["DetectionSettings"]["properties"]["threshold"]
    assert threshold["minimum"] == 0.0
    assert threshold["maximum"] == 1.0


def test_tasks_in_a_users_flow_and_a_file_removed_after_listing(dataset, tmp_path) -> None:
    from anon_tasks import RenderSpec, detect_faces, list_images, mask_faces, write_images

    @flow
    def my_flow(source: str, dest: str) -> list[ManifestRow]:
        images = list_images(source)
        (Path(source) / "coffee.jpg").unlink()  # gone between listing and reading
        found = detect_faces(images, source, CPU)
        render = RenderSpec.from_settings(detection=CPU)
        masked = mask_faces(found, source, dest, render)
        return write_images(masked, source, dest, render)

    rows = {row.source: row for row in my_flow(str(dataset), str(tmp_path / "out"))}
    assert len(rows) == 7
    assert rows["coffee.jpg"].status == "failed"
    assert "removed from the source" in rows["coffee.jpg"].error
    assert rows["astronaut.png"].status == "written"
    assert (tmp_path / "out" / "astronaut.png").exists()
