"""The layers contract in pyproject.toml covers every part of the package.

``lint-imports`` (run by ``make test``) enforces the contract; this test keeps it from passing
vacuously: a new subpackage or top-level module must be placed in a layer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "anon_tasks"


def _layered_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return {name.strip() for layer in layers for name in layer.split("|")}


def test_every_subpackage_and_module_sits_in_a_layer() -> None:
    parts = {f"anon_tasks.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    parts |= {f"anon_tasks.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert len(parts) >= 8
    assert parts <= _layered_modules()
    assert "flows" in _layered_modules()


def test_only_the_package_root_and_version_are_outside_subpackages() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "cli.py", "demo.py"}
