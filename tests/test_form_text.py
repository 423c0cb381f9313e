"""The deployments' run forms read well: plain-text descriptions, human labels, one note for
every method. The Prefect UI renders descriptions as markdown, so angle brackets vanish (HTML),
URLs become links and RST backticks show raw."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prefect.utilities.callables import parameter_schema

from anon_tasks.core.settings import (
    MASKED_PLACEHOLDER,
    MASKED_WORDS,
    AnonymizeMethod,
    MaskSettings,
    RunSettings,
    caption_note_for,
)
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.flows import anonymize_dataset, anonymize_partitioned

SCHEMAS = {
    "anonymize-dataset": parameter_schema(anonymize_dataset.fn).model_dump(),
    "anonymize-partitioned": parameter_schema(anonymize_partitioned.fn).model_dump(),
}
#: What markdown or HTML would eat or change: tags, links, code spans.
MARKUP = re.compile(r"<[^>]*>|https?://|`")
#: A type's name (CamelCase), as a label the form would show.
TYPE_NAME = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]+)+$")


def _texts(node: object, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, key, text) of every title and description in a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("title", "description") and isinstance(value, str):
                yield path, key, value
            yield from _texts(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _texts(value, f"{path}[{index}]")


@pytest.mark.parametrize("flow_name", sorted(SCHEMAS))
def test_descriptions_are_plain_text(flow_name: str) -> None:
    found = [(path, text) for path, key, text in _texts(SCHEMAS[flow_name]) if key == "description"]
    assert len(found) > 10
    for path, text in found:
        assert not MARKUP.search(text), f"{path}: {text!r}"


@pytest.mark.parametrize("flow_name", sorted(SCHEMAS))
def test_every_field_that_names_a_type_has_a_human_title(flow_name: str) -> None:
    """A field whose schema is a reference (an enum, a settings model) is labelled by the
    reference's title, a type name, unless it has its own."""
    schema = SCHEMAS[flow_name]
    definitions = schema.get("definitions", {})

    def label(prop: dict) -> str:
        if prop.get("title"):
            return prop["title"]
        ref = prop.get("$ref") or prop.get("allOf", [{}])[0].get("$ref", "")
        return definitions.get(ref.rsplit("/", 1)[-1], {}).get("title", "")

    checked = 0
    for properties in [
        schema["properties"],
        *(d.get("properties", {}) for d in schema.get("definitions", {}).values()),
    ]:
        for name, prop in properties.items():
            if "$ref" in prop or "allOf" in prop:
                checked += 1
                title = label(prop)
                assert title, name
                assert not TYPE_NAME.match(title), f"{name}: {title!r}"
    assert checked >= 3  # method, quality, precision at least


@given(
    note=st.text(max_size=80).map(lambda text: text.replace("{", "(")),
    method=st.sampled_from(list(AnonymizeMethod)),
)
def test_the_caption_note_follows_the_method(note: str, method: AnonymizeMethod) -> None:
    with_placeholder = f"faces are {MASKED_PLACEHOLDER}. {note}"
    render = RenderSpec.from_settings(
        masking=MaskSettings(method=method), run=RunSettings(caption_note=with_placeholder)
    )
    assert render.caption_note == f"faces are {MASKED_WORDS[method]}. {note}"
    assert caption_note_for(note, method) == note  # no placeholder: the note as written
    assert caption_note_for(None, method) is None


def test_the_deployments_note_is_the_placeholder() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "deployments" / "prefect.yaml").read_text()
    assert "caption_note: faces are {masked}" in text
    assert "faces are blurred" not in text


@pytest.mark.parametrize("flow_name", sorted(SCHEMAS))
def test_partition_fields_are_accepted_but_not_on_the_form(flow_name: str) -> None:
    """The fan-out sets them on its children (whose deployment enforces its schema); a person
    filling the run form never sees them, and a misspelt field is still refused."""
    from prefect.utilities.schema_tools.validation import validate

    from anon_tasks.core.settings import INTERNAL_RUN_FIELDS

    schema = SCHEMAS[flow_name]
    run = schema["definitions"]["RunSettings"]
    assert not set(INTERNAL_RUN_FIELDS) & set(run["properties"])
    base = {"source": "raw", "dest": "clean"}
    if flow_name == "anonymize-partitioned":
        base["partitions"] = 2
    accepted = {**base, "run": {"partition_index": 1, "partition_count": 2, "shard_size": 8}}
    assert validate(accepted, schema, raise_on_error=False) == []
    for wrong in ({"partition_index": -1}, {"partition_count": "two"}, {"partition_indx": 1}):
        assert validate({**base, "run": wrong}, schema, raise_on_error=False), wrong
    assert RunSettings(partition_index=1, partition_count=2).partition == (1, 2)
