"""The house keeps its shape: imports run one way (and in no circle), only the settings
module reads the environment, and no module, class or function grows past what a reader
can hold (450 / 300 / 80 lines)."""
from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

#: the packages that ship (pyproject.toml)
PACKAGES = ("app", "nessa", "jobqueue", "vectorindex", "enroll_models", "runtime_models", "speechcore", "diarizer")
#: what runs from a checkout but does not ship
TOOLS = ("bench", "scripts")
# package -> our packages it must never import
FORBIDDEN = {
    "speechcore": {"app", "nessa", "enroll_models", "runtime_models", "jobqueue", "vectorindex", "diarizer"},
    "nessa": {"app", "enroll_models", "runtime_models", "jobqueue", "vectorindex"},
    "enroll_models": {"app", "nessa", "runtime_models", "jobqueue", "vectorindex", "diarizer"},
    "runtime_models": {"app", "nessa", "enroll_models", "jobqueue", "vectorindex", "diarizer"},
    "diarizer": {"app", "enroll_models", "runtime_models", "jobqueue", "vectorindex"},
    "jobqueue": {"app", "nessa", "enroll_models", "runtime_models", "speechcore", "diarizer", "vectorindex"},
    "vectorindex": {"app", "nessa", "enroll_models", "runtime_models", "speechcore", "diarizer", "jobqueue"},
}
# within app/: layer -> app layers it must never import (web -> services -> store)
APP_LAYERS = {
    "app.store": {"app.web", "app.cli", "app.services", "app.worker"},
    "app.services": {"app.web", "app.cli"},
    "app.web": {"app.cli"},
}
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 450, 300, 80


def _python_files(*folders: str) -> list[pathlib.Path]:
    return sorted(path for folder in folders for path in (REPO_ROOT / folder).rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, as absolute dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_one_way(package):
    offending = {str(path.relative_to(REPO_ROOT)): sorted({n.split(".")[0] for n in _imports(path)} & FORBIDDEN[package])
                 for path in _python_files(package)}
    assert {k: v for k, v in offending.items() if v} == {}


def test_app_layers_import_downwards_only():
    offending = []
    for path in _python_files("app"):
        module = _module_name(path)
        for layer, forbidden in APP_LAYERS.items():
            if module == layer or module.startswith(layer + "."):
                offending += [f"{module} -> {name}" for name in _imports(path)
                              if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert offending == []


def test_only_the_cli_reaches_the_nessa_lab():
    """nessa/lab/ (training, evaluation, experiments) serves the `nessa eval`/`nessa align`
    commands; the serving core, the services and the diarizer never need it."""
    offending = [f"{_module_name(p)} -> {name}" for p in _python_files(*PACKAGES)
                 if not _module_name(p).startswith(("nessa.lab", "app.cli"))
                 for name in _imports(p) if name == "nessa.lab" or name.startswith("nessa.lab.")]
    assert offending == []


def test_shipped_packages_never_import_tools_or_tests():
    offending = {_module_name(p): sorted(n for n in _imports(p) if n.split(".")[0] in (*TOOLS, "tests"))
                 for p in _python_files(*PACKAGES)}
    assert {k: v for k, v in offending.items() if v} == {}


def test_no_import_cycles_between_modules():
    """Function-level imports count too: a late import hides a cycle, it does not remove it."""
    modules = {_module_name(p): p for p in _python_files(*PACKAGES)}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ that re-exports its modules is not a cycle with them
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    assert _cycles(graph) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_only_the_settings_module_reads_the_environment():
    readers = []
    for path in _python_files(*PACKAGES, *TOOLS):
        source = path.read_text()
        if "os.environ" in source or "os.getenv" in source or "getenv(" in source:
            readers.append(str(path.relative_to(REPO_ROOT)))
    # bench and scripts may hand an environment to a child process they start (threads,
    # a database URL), never read their settings from it
    assert [r for r in readers if not _only_passes_environment_on(REPO_ROOT / r)] == ["app/settings.py"]


def _only_passes_environment_on(path: pathlib.Path) -> bool:
    if path.parts[-2] not in TOOLS:
        return False
    return all("os.environ.get" not in line and "getenv" not in line and "os.environ[" not in line
               for line in path.read_text().splitlines())


def _sizes(path: pathlib.Path):
    source = path.read_text()
    yield "module", _module_name(path), len(source.splitlines()), MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield "function", f"{_module_name(path)}:{node.name}", node.end_lineno - node.lineno + 1, MAX_FUNCTION_LINES
        elif isinstance(node, ast.ClassDef):
            yield "class", f"{_module_name(path)}:{node.name}", node.end_lineno - node.lineno + 1, MAX_CLASS_LINES


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_classes_and_functions_stay_readable(package):
    too_long = [f"{kind} {name}: {lines} lines (at most {limit})"
                for path in _python_files(package) for kind, name, lines, limit in _sizes(path) if lines > limit]
    assert too_long == []
