"""Dependency direction: nothing below the Prefect tasks imports prefect."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "anon_tasks"
#: Modules allowed to import prefect: the task layer and the worker launcher (deployment tooling).
PREFECT_LAYER = {"tasks.py", "workers.py", "__init__.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_do_not_import_prefect() -> None:
    core = [p for p in PACKAGE.glob("*.py") if p.name not in PREFECT_LAYER]
    assert len(core) >= 10
    offenders = [p.name for p in core if "prefect" in imported_modules(p)]
    assert offenders == []


def test_core_modules_do_not_print() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(path.name)
    assert offenders == []
