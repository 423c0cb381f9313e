"""The layers contract in pyproject.toml covers every part of the package.

``lint-imports`` (run by ``make test``) enforces the contract; these tests keep it from passing
vacuously: a new subpackage or top-level module must be placed in a layer, and the flows, which
import-linter sees only as the repository's ``flows`` folder, are imported by nothing below them
under their installed name either. The package data must install them as ``anon_tasks.flows``.
"""

from __future__ import annotations

import ast
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


def test_nothing_below_the_flows_imports_them() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE:
            continue  # the package root and the entry points (cli, demo) sit above the flows
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [str(path) for name in names if name.startswith("anon_tasks.flows")]
    assert offenders == []


def test_the_flows_install_as_anon_tasks_flows() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "anon_tasks.flows" in setuptools["packages"]
    assert setuptools["package-dir"]["anon_tasks.flows"] == "flows"
    listed = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {f"anon_tasks.{name}" for name in listed} <= set(setuptools["packages"])


def test_only_the_package_root_and_the_entry_points_sit_outside_subpackages() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "cli.py", "demo.py"}
