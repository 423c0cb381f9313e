"""The Prefect UI, in a real browser, against a real ``prefect server start`` on 127.0.0.1.

The deployment ``anonymize-dataset/cpu`` is deployed from ``deployments/prefect.yaml`` as the
README says. Its custom-run form (Deployments > anonymize-dataset/cpu > Run > Custom run) must
read well in both UIs the server serves: the V2 UI (where the root URL leads) and the V1 UI
(deep links, "Switch to V1 UI"). A run submitted from the V2 form must complete on a CPU worker
and write the masked images.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import time
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.faces import ASTRONAUT_FACE_XYXY, MIRRORED_FACE_XYXY, face_hidden
from tests.test_deployments import BIN, api, get_json, prefect_cli, stop_group

pytestmark = pytest.mark.slow

DEPLOYMENT = "anonymize-dataset/cpu"
POOL = "anon-cpu"
#: The four methods, as the README promises them in the form's dropdown.
METHODS = ["blur", "solid", "mosaic", "none"]
RUN_WAIT_SECONDS = 180
SUBMIT_WAIT_SECONDS = 60
#: Submits of the form when the server answers 503 (busy) and makes no run.
SUBMIT_ATTEMPTS = 3
FORM_WAIT_MS = 30_000
FLOW_RUN_URL = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")
#: The form's label of a field: its title, then " (Optional)" when the field has a default.
OPTIONAL = re.compile(r"\s*\(Optional\)$")
METHOD_LABEL = re.compile(r"^Method(\s*\(Optional\))?$")
#: A type's name (AnonymizeMethod, DetectionSettings): what a label must never show.
TYPE_NAME = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")
#: What a plain-text label must not contain: brackets and type markers.
TYPE_MARKER = re.compile(r"[\[\]()<>|{}]|\bOptional\b|\bNone\b")
#: Markup shown raw, or what is left after markdown ate an <angle-bracketed> word.
RAW_MARKUP = re.compile(r"[<>`]|\*\*|&lt;|&gt;|\]\(|\bEmpty:\s*(?:[.,;:)]|$)")


def ui_base(env: dict[str, str]) -> str:
    return env["PREFECT_API_URL"].removesuffix("/api")


def deploy(env: dict[str, str]) -> dict:
    """Creates the pool and deploys anonymize-dataset/cpu; its API record."""
    prefect_cli(env, "work-pool", "create", POOL, "--type", "process")
    name = DEPLOYMENT.split("/")[1]  # prefect.yaml names deployments without their flow
    prefect_cli(env, "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", name)
    return api(env, f"/deployments/name/{DEPLOYMENT}")


def schema_descriptions(node: object) -> set[str]:
    """Every description in a JSON schema, whitespace collapsed as a browser shows it."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                found.add(" ".join(value.split()))
            else:
                found |= schema_descriptions(value)
    elif isinstance(node, list):
        for value in node:
            found |= schema_descriptions(value)
    return found


@dataclass(frozen=True)
class Ui:
    """One of the server's UIs: where it is served and how its schema form is built."""

    name: str
    base: str

    @property
    def labels(self) -> str:
        """The labels of the form's fields."""
        if self.name == "v1":
            return ".schema-form-property__label"
        return "form label"

    @property
    def descriptions(self) -> str:
        """The descriptions under the labels."""
        if self.name == "v1":
            return ".schema-form-property__description"
        return "form label + p"

    def open_custom_run(self, page, deployment_id: str) -> None:
        """The deployment's page, then Run > Custom run, as a user gets there."""
        page.goto(f"{self.base}/deployments/deployment/{deployment_id}")
        page.get_by_role("button", name="Run", exact=True).click()
        custom = page.get_by_role("menuitem", name="Custom run")
        custom.or_(page.get_by_text("Custom run", exact=True)).first.click()
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment_id}/run"))
        page.locator(self.labels, has_text=re.compile(r"^masking\b")).first.wait_for(
            timeout=FORM_WAIT_MS
        )

    def method_control(self, page):
        """The Method field's input, or None when the form has no field labelled Method."""
        label = page.locator(self.labels, has_text=METHOD_LABEL)
        if label.count() != 1:
            return None
        if self.name == "v1":
            prop = page.locator(".schema-form-property").filter(has=label).last
            return prop.locator(".schema-form-property__fields").first
        return page.locator(f"[id='{label.get_attribute('for')}']")

    def method_options(self, page, control) -> list[str] | None:
        """The options the Method dropdown offers; None when the field is not a dropdown."""
        native = control.locator("xpath=self::select | .//select")
        if native.count():
            return [text.strip() for text in native.first.locator("option").all_inner_texts()]
        if self.name == "v1":
            button = control.locator(".p-select .p-select-button__control")
            if not button.count():
                return None
            button.first.focus()  # prefect-design's select opens from the keyboard
            page.keyboard.press("ArrowDown")
            options = page.locator(".p-select-options [role=option]")
        else:
            if control.get_attribute("aria-haspopup") != "listbox":
                return None
            control.click()
            options = page.get_by_role("listbox").get_by_role("option")
        options.first.wait_for()
        shown = [text.strip() for text in options.all_inner_texts()]
        page.keyboard.press("Escape")
        return shown


def the_uis(env: dict[str, str]) -> list[Ui]:
    """The UIs the server serves, the default (where its root URL leads) first."""
    settings = get_json(ui_base(env) + "/ui-settings")
    names = sorted(settings["available_uis"], key=lambda name: name != settings["default_ui"])
    return [Ui(name, ui_base(env) + settings[f"{name}_base_url"].rstrip("/")) for name in names]


def form_problems(ui: Ui, page, schema: dict) -> list[str]:
    """What reads wrong in the open custom-run form: type names as labels, raw markup in
    descriptions, descriptions that differ from the schema's, a Method field that is not a
    dropdown of the four methods."""
    known_descriptions = schema_descriptions(schema)
    definitions = schema.get("definitions", {}).values()
    fields = [schema["properties"], *(each.get("properties", {}) for each in definitions)]
    field_descriptions = schema_descriptions([list(each.values()) for each in fields])
    labels = [" ".join(text.split()) for text in page.locator(ui.labels).all_inner_texts()]
    descriptions = [
        " ".join(text.split()) for text in page.locator(ui.descriptions).all_inner_texts()
    ]
    problems = []
    for label in labels:
        core = OPTIONAL.sub("", label)
        if TYPE_NAME.search(core) or TYPE_MARKER.search(core):
            problems.append(f"label reads like a type: {label!r}")
    for text in descriptions:
        if RAW_MARKUP.search(text):
            problems.append(f"description shows markup: {text!r}")
        elif text not in known_descriptions:
            nearest = difflib.get_close_matches(text, known_descriptions, n=1, cutoff=0.3)
            problems.append(f"description {text!r} is not the schema's {nearest}")
    missing = sorted(field_descriptions - set(descriptions))
    if missing:  # the form did not render every field (or hid descriptions): not all checked
        problems.append(f"descriptions not shown: {missing}")
    control = ui.method_control(page)
    if control is None:
        problems.append(f"no field labelled Method; the labels: {labels}")
    else:
        options = ui.method_options(page, control)
        if options is None:
            problems.append("the Method field is not a dropdown")
        elif sorted(options) != sorted(METHODS) or len(options) != len(METHODS):
            problems.append(f"the Method dropdown offers {options}, not {METHODS}")
    return [f"{ui.name} UI: {problem}" for problem in problems]


def test_the_custom_run_form_reads_well(prefect_server, page) -> None:
    env = prefect_server
    deployment = deploy(env)
    schema = deployment["parameter_openapi_schema"]
    uis = the_uis(env)
    assert uis[0].name == "v2", uis  # the root URL leads to the V2 UI
    page.goto(ui_base(env) + "/")
    page.wait_for_url(f"{uis[0].base}/**")
    problems = []
    for ui in uis:
        ui.open_custom_run(page, deployment["id"])
        problems += form_problems(ui, page, schema)
    assert not problems, "the custom-run form reads wrong:\n" + "\n".join(problems)


def deployment_runs(env: dict[str, str], deployment_id: str) -> list[dict]:
    return api(env, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})


def submit(page, env: dict[str, str], deployment_id: str) -> str:
    """Submits the open custom-run form and follows the UI to the new run's page; its id.

    The V2 UI goes back to the deployment and offers the run in a toast ("View run"); a UI
    that opens the run's page itself needs no toast. When the server answers the submission
    with 503 (its SQLite database was busy: Prefect's signal to retry, which its Python client
    follows and the UI does not) and made no run, Submit is pressed again, as a user would, at
    most SUBMIT_ATTEMPTS times; a submission refused otherwise fails at once. Bounded by
    SUBMIT_WAIT_SECONDS; a failure names the toasts shown, the API calls that failed and the
    runs the deployment has."""
    failed_calls: list[str] = []
    page.on(
        "response",
        lambda response: (
            failed_calls.append(f"{response.status} {response.url}")
            if response.status >= 400
            else None
        ),
    )
    submit_button = page.get_by_role("button", name="Submit", exact=True)
    submit_button.click()
    attempts = 1
    toasts, seen = page.locator("[data-sonner-toast]"), []
    view_run = page.get_by_role("link", name="View run")
    deadline = time.monotonic() + SUBMIT_WAIT_SECONDS
    while not FLOW_RUN_URL.search(page.url):
        if view_run.count() and view_run.first.is_visible():
            view_run.first.click()
            page.wait_for_url(FLOW_RUN_URL)
            break
        seen += [text for text in toasts.all_inner_texts() if text not in seen]
        refused = [call for call in failed_calls if "/create_flow_run" in call]
        busy = all(call.startswith("503 ") for call in refused)
        retry = busy and len(refused) == attempts < SUBMIT_ATTEMPTS
        if retry and not deployment_runs(env, deployment_id):
            page.wait_for_timeout(1000)
            submit_button.click()
            attempts += 1
        elif not busy or len(refused) == attempts or time.monotonic() > deadline:
            runs = deployment_runs(env, deployment_id)
            raise AssertionError(
                f"no run page after {attempts} Submit(s): at {page.url}; "
                f"toasts {seen}; failed calls {failed_calls}; "
                f"the deployment's runs {[run['state_type'] for run in runs]}"
            )
        page.wait_for_timeout(200)
    return FLOW_RUN_URL.search(page.url).group(1)


def wait_for_run(env: dict[str, str], flow_run_id: str) -> dict:
    """The flow run once it is final (bounded by RUN_WAIT_SECONDS)."""
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    run = api(env, f"/flow_runs/{flow_run_id}")
    while run["state_type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"the run did not finish: {run['state']}"
        time.sleep(1)
        run = api(env, f"/flow_runs/{flow_run_id}")
    return run


def test_a_custom_run_from_the_form_masks_the_faces(
    prefect_server, page, tmp_path, astronaut_rgb
) -> None:
    env = prefect_server
    source, dest = tmp_path / "raw", tmp_path / "clean"
    (source / "people").mkdir(parents=True)
    dest.mkdir()
    photos = {
        "astronaut.jpg": (astronaut_rgb, ASTRONAUT_FACE_XYXY),
        "people/mirrored.jpg": (np.ascontiguousarray(astronaut_rgb[:, ::-1]), MIRRORED_FACE_XYXY),
    }
    for name, (pixels, _) in photos.items():
        Image.fromarray(pixels).save(source / name, quality=95)
    deployment = deploy(env)
    ui = the_uis(env)[0]
    assert ui.name == "v2", ui  # where the root URL leads; the steps below are the V2 UI's
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ui.open_custom_run(page, deployment["id"])
            page.get_by_label("source", exact=True).fill(str(source))
            page.get_by_label("dest", exact=True).fill(str(dest))
            control = ui.method_control(page)
            assert control is not None
            control.click()
            page.get_by_role("option", name="solid", exact=True).click()
            page.get_by_role("listbox").wait_for(state="hidden")
            assert control.inner_text().strip() == "solid"
            flow_run_id = submit(page, env, deployment["id"])
            run = wait_for_run(env, flow_run_id)
            assert run["state_type"] == "COMPLETED", (run["state"], worker_log.read_text()[-3000:])
            assert run["deployment_id"] == deployment["id"]
            assert run["parameters"]["source"] == str(source)
            assert run["parameters"]["dest"] == str(dest)
            assert run["parameters"]["masking"]["method"] == "solid"
            page.reload()
            page.get_by_text("Completed", exact=True).first.wait_for(timeout=FORM_WAIT_MS)
        finally:
            stop_group(worker)  # the worker first, then the server (fixture teardown)
    rows = [
        json.loads(line)
        for line in (dest / "_anonymize" / "manifest.jsonl").read_text().splitlines()
    ]
    assert sorted(row["source"] for row in rows) == sorted(photos)
    assert all(row["status"] == "written" and row["faces"] for row in rows), rows
    for name, (pixels, face) in photos.items():
        output = np.asarray(Image.open(dest / name).convert("RGB"))
        assert output.shape == pixels.shape, name
        assert face_hidden(pixels, output, face), name
