"""The deployment's event trigger: its contract, and an event lacking a field never fails
silently. Prefect's own template rendering turns the YAML's parameters into a run's parameters;
a missing field renders empty, and the run then fails at once naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prefect.server.events.actions import RunDeployment
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.datasets.paths import check_dataset_paths

DEPLOYMENTS = Path(__file__).parent.parent / "deployments" / "prefect.yaml"


def _trigger() -> dict:
    config = yaml.safe_load(DEPLOYMENTS.read_text())
    (gpu,) = [d for d in config["deployments"] if d["name"] == "gpu"]
    (trigger,) = gpu["triggers"]
    return trigger


def _rendered(payload: dict) -> dict:
    """The run's parameters as the automation's run-deployment action renders them."""
    parameters = dict(_trigger()["parameters"])
    RunDeployment._upgrade_v1_templates(parameters)
    context = HydrationContext(
        raise_on_error=True, render_jinja=True, jinja_context={"event": {"payload": payload}}
    )
    return hydrate(parameters, context)


def test_the_contract_is_the_documented_one() -> None:
    trigger = _trigger()
    assert trigger["match"] == {"prefect.resource.id": "training-data.dataset.*"}
    assert trigger["expect"] == ["training-data.dataset.ready"]
    readme = (DEPLOYMENTS.parent.parent / "README.md").read_text()
    for words in ("training-data.dataset.ready", "training-data.dataset.", "naming the missing"):
        assert words in readme


@given(
    source=st.text(min_size=1, max_size=40).filter(str.strip),
    dest=st.text(min_size=1, max_size=40).filter(str.strip),
)
def test_a_full_payload_renders_as_it_is(source: str, dest: str) -> None:
    assert _rendered({"source": source, "dest": dest}) == {"source": source, "dest": dest}


@pytest.mark.parametrize("missing", ["source", "dest"])
def test_a_payload_lacking_a_field_starts_a_run_that_names_it(missing: str, tmp_path) -> None:
    (tmp_path / "raw").mkdir()
    payload = {"source": str(tmp_path / "raw"), "dest": str(tmp_path / "clean")}
    del payload[missing]
    parameters = _rendered(payload)  # renders: the run is created, not refused in the feed
    assert parameters[missing] == ""
    with pytest.raises(ConfigurationError, match=f"^{missing} is empty") as caught:
        check_dataset_paths(parameters["source"], parameters["dest"])
    assert caught.value.field == missing
    assert not list(Path.cwd().glob("_anonymize"))  # never the working directory instead
