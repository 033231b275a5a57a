"""The layout's import rules (issue 16), read from the source with ``ast``.

- Imports point one way: ``api`` → ``policy``, ``retention``, ``exports`` →
  ``archiver``. Every import counts here, including those inside functions and
  under ``TYPE_CHECKING``: a lazy or type-only import is still a dependency.
- No context (``archiver``, ``policy``, ``retention``, ``exports``) imports
  ``litestar``, however it imports it.
- No modules form an import cycle (``api.cli.main`` ↔ ``api.sandbox.demo`` included). Imports
  inside functions count: moving an import into a function hides a cycle from
  the interpreter but leaves the tangle. Imports under ``TYPE_CHECKING`` do not
  count: they never run, and two modules naming each other's types is no
  dependency at run time.
- Inside ``archiver``, the subpackages (``core``, ``crypto``, ``vault``, …) form
  no cycle either: ``core`` imports no other subpackage, and each subpackage's
  dependencies on the others run one way.
- Every table is declared in its context's ``models.py``, and ``api.models``
  imports every one of those modules (Alembic's one view of the schema).
- Importing a context reads no environment, opens no connection and builds no
  blind-index tables.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "archiver", "policy", "retention", "exports")
CONTEXTS = ("archiver", "policy", "retention", "exports")
# A package may import only packages of its own layer or below.
LAYER = {"archiver": 0, "policy": 1, "retention": 1, "exports": 1, "api": 2}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from the module that makes it."""

    target: str  # a Strongroom module, or the top-level name of another package
    line: int
    deferred: bool  # inside a function body
    type_only: bool  # under ``if TYPE_CHECKING:``


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    """Every Strongroom module by dotted name (migrations are scripts alembic runs)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.relative_to(ROOT).parts:
                found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str:
    """The Strongroom module ``name`` lands in, else its top-level package name."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in SOURCES:
            return ".".join(parts[:end])
    return parts[0]


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST, deferred: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(_resolve(alias.name), child.lineno, deferred, type_only)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    # ``from archiver.audit import jobs`` imports the module archiver.audit.jobs.
                    full = f"{base}.{alias.name}"
                    target = full if full in SOURCES else _resolve(base)
                    yield Import(target, child.lineno, deferred, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), deferred, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), deferred, type_only)
            else:
                inside = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                yield from walk(child, deferred or inside, type_only)

    yield from walk(tree, False, False)


IMPORTS = {module: list(_imports(module, path)) for module, path in SOURCES.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def _direction_violations(imports: dict[str, list[Import]]) -> list[str]:
    return [
        f"{module}:{imp.line} imports {imp.target}"
        for module, found in imports.items()
        for imp in found
        if _package(imp.target) in LAYER and LAYER[_package(imp.target)] > LAYER[_package(module)]
    ]


def _litestar_imports(imports: dict[str, list[Import]]) -> list[str]:
    return [
        f"{module}:{imp.line} imports litestar"
        for module, found in imports.items()
        if _package(module) in CONTEXTS
        for imp in found
        if imp.target == "litestar"
    ]


def _runtime_graph(imports: dict[str, list[Import]]) -> dict[str, set[str]]:
    return {
        module: {imp.target for imp in found if imp.target in SOURCES and not imp.type_only}
        for module, found in imports.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or a module
    importing itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def test_the_scanner_sees_the_imports_the_rules_are_about() -> None:
    # Without these the rules below would pass on a scanner that finds nothing.
    assert {"api", "archiver", "policy"} <= {_package(m) for m in SOURCES}
    graph = _runtime_graph(IMPORTS)
    assert "api.sandbox.demo" in graph["api.cli.main"]  # deferred, inside the demo command
    assert "archiver.search.blind_index" in graph["archiver.search.services"]
    assert any(
        imp.type_only for imp in IMPORTS["archiver.search.blind_index"]
    )  # hashlib's _Hash, for annotations only
    assert "litestar" in {imp.target for imp in IMPORTS["api.app"]}


def test_imports_point_from_api_through_the_contexts_to_archiver() -> None:
    assert _direction_violations(IMPORTS) == []


def test_no_context_imports_litestar() -> None:
    assert _litestar_imports(IMPORTS) == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert _cycles(_runtime_graph(IMPORTS)) == []


def _subpackage(module: str) -> str | None:
    """``archiver.vault`` for ``archiver.vault.services``; None outside archiver's subpackages."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "archiver" and len(parts) > 2 else None


def _subpackage_graph(imports: dict[str, list[Import]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, found in imports.items():
        source = _subpackage(module)
        if source is None:
            continue
        targets = graph.setdefault(source, set())
        for imp in found:
            target = _subpackage(imp.target)
            if target is not None and target != source:
                targets.add(target)
    return graph


def test_archivers_subpackages_depend_on_each_other_without_cycles() -> None:
    graph = _subpackage_graph(IMPORTS)
    assert {"archiver.core", "archiver.crypto", "archiver.vault", "archiver.capture"} <= set(graph)
    assert graph["archiver.core"] == set()
    assert _cycles(graph) == []


def test_every_table_is_declared_in_a_models_module_that_api_models_imports() -> None:
    import api.models
    from archiver.core.db import Base

    declared = {mapper.class_.__module__ for mapper in Base.registry.mappers}
    assert all(module.endswith(".models") for module in declared), sorted(declared)
    imported = {module.__name__ for module in api.models.TABLE_MODULES}
    on_disk = {m for m in SOURCES if m.endswith(".models") and not m.startswith("api.")}
    assert declared <= imported == on_disk


def test_the_checks_catch_what_they_are_for() -> None:
    bad = {
        "archiver.vault.services": [Import("api.settings", 1, deferred=True, type_only=False)],
        "policy.lexicon": [Import("litestar", 2, deferred=False, type_only=True)],
    }
    assert _direction_violations(bad) == ["archiver.vault.services:1 imports api.settings"]
    assert _litestar_imports(bad) == ["policy.lexicon:2 imports litestar"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    tangled = {
        "archiver.capture.services": [Import("archiver.records.services", 1, False, False)],
        "archiver.records.services": [Import("archiver.capture.models", 1, True, False)],
    }
    assert _cycles(_subpackage_graph(tangled)) == [["archiver.capture", "archiver.records"]]


def _environment_reads(tree: ast.Module) -> Iterator[int]:
    """Lines that read the environment when the module is imported: module and
    class bodies, decorators and default values, but not function bodies."""

    def walk(node: ast.AST) -> Iterator[int]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for part in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
                if part is not None:
                    yield from walk(part)
            return
        if isinstance(node, ast.Lambda):
            for part in [*node.args.defaults, *node.args.kw_defaults]:
                if part is not None:
                    yield from walk(part)
            return
        if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")) or (
            isinstance(node, ast.Name) and node.id in ("environ", "getenv")
        ):
            yield node.lineno
        for child in ast.iter_child_nodes(node):
            yield from walk(child)

    yield from walk(tree)


def test_environment_reads_at_import_are_seen() -> None:
    source = (
        "import os\n"
        "def f(x=os.getenv('A')):\n"
        "    return os.environ['B']\n"
        "class C:\n"
        "    d = os.environ.get('C')\n"
        "LATER = lambda: os.getenv('D')\n"
    )
    assert list(_environment_reads(ast.parse(source))) == [2, 5]


@pytest.mark.parametrize("package", CONTEXTS)
def test_no_context_reads_the_environment_at_import(package: str) -> None:
    reads = [
        f"{module}:{line}"
        for module, path in SOURCES.items()
        if _package(module) == package
        for line in _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert reads == []


# Run in a fresh interpreter: this one has imported (and used) everything already.
_IMPORT_EVERYTHING = """
import importlib, json, socket, sqlite3, sys

def refuse(*args, **kwargs):
    raise AssertionError("a connection was opened at import time")

socket.socket.connect = refuse
socket.create_connection = refuse
sqlite3.connect = refuse
for name in sys.argv[1:]:
    importlib.import_module(name)
from archiver.search import blind_index
before = blind_index._tables.cache_info().misses
blind_index.tokenize("日本語のテキスト")
blind_index.query_tokens("café")
print(json.dumps({"before": before, "after": blind_index._tables.cache_info().misses}))
"""


def test_importing_the_contexts_opens_nothing_and_builds_no_tables() -> None:
    modules = sorted(m for m in SOURCES if _package(m) in CONTEXTS)
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # Built on first use, once; not when the module loaded.
    assert json.loads(done.stdout) == {"before": 0, "after": 1}
