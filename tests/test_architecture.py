"""The import graph stays one-way, and only the settings module reads the environment."""
from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("app", "nessa", "enroll_models", "runtime_models", "speechcore", "diarizer")
# package -> our packages it must never import
FORBIDDEN = {
    "speechcore": {"app", "nessa", "enroll_models", "runtime_models"},
    "nessa": {"app", "enroll_models", "runtime_models"},
    "enroll_models": {"app", "nessa", "runtime_models"},
    "runtime_models": {"app", "nessa", "enroll_models"},
    "diarizer": {"app", "enroll_models", "runtime_models"},
}


def _python_files(package: str):
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _imported_top_levels(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_one_way(package):
    offending = {str(path.relative_to(REPO_ROOT)): sorted(_imported_top_levels(path) & FORBIDDEN[package])
                 for path in _python_files(package)}
    assert {k: v for k, v in offending.items() if v} == {}


def test_only_the_settings_module_reads_the_environment():
    readers = []
    for package in PACKAGES:
        for path in _python_files(package):
            source = path.read_text()
            if "os.environ" in source or "os.getenv" in source or "getenv(" in source:
                readers.append(str(path.relative_to(REPO_ROOT)))
    assert readers == ["app/settings.py"]
