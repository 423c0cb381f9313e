"""Invariant 9: a changed setting never serves a stale output or stale detections.

Both keys are derived from the settings models themselves. These tests walk every field of
every settings model, so a field added tomorrow fails here until it either changes the keys or
is declared neutral in ``anon_tasks.datasets.keys``.
"""

from __future__ import annotations

import enum
import types
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from anon_tasks.core.records import ImageRef, SidecarRef
from anon_tasks.core.settings import DetectionSettings, MaskSettings, OutputSettings, RunSettings
from anon_tasks.datasets.keys import (
    DETECTION_NEUTRAL_FIELDS,
    OUTPUT_NEUTRAL_FIELDS,
    RenderSpec,
    detection_context_key,
)
from anon_tasks.detection.detector import SCORE_FLOOR

MODELS: tuple[type[BaseModel], ...] = (DetectionSettings, MaskSettings, OutputSettings, RunSettings)
IMAGE = ImageRef(
    relative_path="a/b.jpg",
    size_bytes=10,
    fingerprint="size:10:mtime_ns:1:ino:2:ctime_ns:3",
    sidecars=(SidecarRef(relative_path="a/b.txt", fingerprint="f"),),
)
SHA = "0" * 64


def _bounds(info: FieldInfo) -> dict[str, float]:
    found: dict[str, float] = {}
    for meta in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            value = getattr(meta, name, None)
            if value is not None:
                found[name] = value
    return found


def _another_value(model: type[BaseModel], name: str, current: object) -> object:
    """A valid value of ``model.name`` other than ``current``."""
    info = model.model_fields[name]
    annotation = info.annotation
    base = annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        if type(None) in args and current is not None:
            return None
        base = next(a for a in args if a is not type(None))
    if name == "device":
        return "cpu" if current != "cpu" else "cuda:0"
    if name in ("partition_index", "partition_count"):
        return None  # validated together: handled by the caller
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return next(member for member in base if member != current)
    if base is bool:
        return not current
    if base is int:
        bounds = _bounds(info)
        low = int(bounds.get("ge", bounds.get("gt", 0) + 1))
        return low if current != low else low + 1
    if base is float:
        bounds = _bounds(info)
        high = float(bounds.get("le", 1.0))
        return high if current != high else high / 2
    if base is str:
        return "some-other/value" if name != "model_path" else "other.onnx"
    if typing.get_origin(base) is dict:
        return {"endpoint_url": "http://127.0.0.1:9000"}
    raise AssertionError(f"no alternative value for {model.__name__}.{name}: {annotation}")


def _variants() -> list[tuple[type[BaseModel], str, BaseModel, BaseModel]]:
    cases = []
    for model in MODELS:
        base = model()
        for name in model.model_fields:
            if name == "partition_index":
                changed = model(partition_index=1, partition_count=2)
                cases.append((model, name, model(partition_count=2), changed))
                continue
            if name == "partition_count":
                cases.append((model, name, base, model(partition_count=3)))
                continue
            value = _another_value(model, name, getattr(base, name))
            cases.append((model, name, base, model(**{name: value})))
    return cases


def _keys(changed: BaseModel | None = None) -> tuple[str, str]:
    parts = {model: model() for model in MODELS}
    if changed is not None:
        parts[type(changed)] = changed
    detection = parts[DetectionSettings]
    render = RenderSpec(
        model_sha256=SHA,
        detection=detection,
        masking=parts[MaskSettings],
        output=parts[OutputSettings],
        run=parts[RunSettings],
    ).key(IMAGE)
    detect = detection_context_key(
        source="s3://b/raw",
        model_sha256=SHA,
        detection=detection,
        output=parts[OutputSettings],
    )
    return render, detect


def test_every_neutral_declaration_names_real_fields() -> None:
    for declared in (OUTPUT_NEUTRAL_FIELDS, DETECTION_NEUTRAL_FIELDS):
        assert set(declared) == set(MODELS)
        for model, names in declared.items():
            assert names <= set(model.model_fields), (model.__name__, names)
    # What cannot change an output cannot change detections either.
    for model in MODELS:
        assert OUTPUT_NEUTRAL_FIELDS[model] <= DETECTION_NEUTRAL_FIELDS[model]


@pytest.mark.parametrize(
    ("model", "name", "base", "changed"),
    _variants(),
    ids=[f"{m.__name__}.{n}" for m, n, _, _ in _variants()],
)
def test_each_field_is_in_the_keys_or_declared_neutral(model, name, base, changed) -> None:
    base_render, base_detect = _keys(base)
    render, detect = _keys(changed)
    if name in OUTPUT_NEUTRAL_FIELDS[model]:
        assert render == base_render, f"{name} is declared output-neutral but changes the key"
    else:
        assert render != base_render, f"{model.__name__}.{name} changes no render key"
    if name == "threshold":
        return  # enters the detection key as its score floor: tested below
    if name in DETECTION_NEUTRAL_FIELDS[model]:
        assert detect == base_detect, f"{name} is declared detection-neutral but changes the key"
    else:
        assert detect != base_detect, f"{model.__name__}.{name} changes no detection key"


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_threshold_changes_detections_only_through_the_floor(first: float, second: float) -> None:
    """And no render key: it changes an output only through the faces it masks, which the
    planner compares with the output's (tests/test_threshold_reruns.py)."""
    one = _keys(DetectionSettings(threshold=first))
    two = _keys(DetectionSettings(threshold=second))
    assert one[0] == two[0]
    same_floor = min(first, SCORE_FLOOR) == min(second, SCORE_FLOOR)
    assert (one[1] == two[1]) == same_floor


def test_quality_change_alone_renders_again() -> None:
    """The named case: changing only the quality once left every image `unchanged`."""
    for quality in DetectionSettings.model_fields["quality"].annotation:
        if quality == DetectionSettings().quality:
            continue
        changed = _keys(DetectionSettings(quality=quality))
        assert changed[0] != _keys()[0]
        assert changed[1] != _keys()[1]
