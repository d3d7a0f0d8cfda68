"""Layering, checked on the source: data flows `sources → store → match → render → deliver`, wired by
the pipeline, and the shells sit on top. Any import cycle between modules fails, and so does an import
from a lower layer into a higher one — `TYPE_CHECKING` imports included, since a cycle hidden there is
still a cycle in the design."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

# The source tree beside these tests, not the installed copy (CI installs a wheel): the checks are
# about the code in this checkout, and ARCHITECTURE.md sits at its root.
PACKAGE = Path(__file__).resolve().parents[1] / "digestd"

# Lower numbers may be imported by higher ones, never the other way round; equal layers may import
# each other as long as no cycle forms.
LAYERS: dict[str, int] = {
    "core": 0,
    "rules": 1,
    "sources": 1,
    "store": 1,
    "mail": 1,
    "deliver": 1,
    "bounces": 1,  # VERP, DSN/ARF parsing, the bounce mailboxes
    "config": 1,  # reading the files; the pipeline never sees the settings object
    "relevance": 1,  # TF-IDF, per-reader models, like-list imports (rules use its id parser)
    "pipeline": 2,
    "service": 3,
    "cli": 3,
}
# Top-level modules outside any package: the version and `python -m digestd`.
LOOSE = {"digestd": 0, "digestd.__main__": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path: Path, modules: set[str]) -> set[str]:
    """The digestd modules `path` imports (`from digestd.x import y` names module x.y if it is one)."""
    found: set[str] = set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("digestd"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("digestd"):
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    return {m for m in found if m in modules} - {module_name(path)}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): internal_imports(p, modules) for p in paths}


def layer_of(module: str) -> int:
    if module in LOOSE:
        return LOOSE[module]
    top = module.split(".")[1]
    assert top in LAYERS, f"{module}: package {top!r} has no layer; add it to LAYERS"
    return LAYERS[top]


def upward(graph: Mapping[str, Iterable[str]]) -> list[str]:
    return sorted(
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, deps in graph.items()
        for b in deps
        if layer_of(b) > layer_of(a)
    )


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every group of modules that reach each other (a strongly connected component of more than
    one module), each sorted; a few hundred modules make the quadratic walk instant."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {
        tuple(sorted({a} | {b for b in reach[a] if a in reach.get(b, ())}))
        for a in graph
        if a in reach[a] or any(a in reach.get(b, ()) for b in reach[a])
    }
    return sorted(list(g) for g in groups if len(g) > 1)


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_upward_imports() -> None:
    assert upward(import_graph()) == []


def test_every_package_has_a_layer() -> None:
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in LAYERS, f"digestd/{path.name}/ has no layer"


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """Fed a package with a cycle and an upward import, the same functions find both."""
    root = tmp_path / "digestd"
    for pkg in ("core", "service"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "a.py").write_text("from digestd.core import b\n")
    (root / "core" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from digestd.core.a import X\n"
    )
    (root / "core" / "c.py").write_text("from digestd.service.d import run\n")
    (root / "service" / "d.py").write_text("from ..core import c\n")

    global PACKAGE
    saved, PACKAGE = PACKAGE, root
    try:
        graph = import_graph(root)
    finally:
        PACKAGE = saved
    assert ["digestd.core.a", "digestd.core.b"] in cycles(graph)
    assert ["digestd.core.c", "digestd.service.d"] in cycles(graph)
    assert upward(graph) == ["digestd.core.c (layer 0) imports digestd.service.d (layer 3)"]


@pytest.mark.parametrize("name", ["pipeline", "service"])
def test_named_packages_exist(name: str) -> None:
    assert (PACKAGE / name / "__init__.py").exists()


def test_tests_mirror_the_packages() -> None:
    """Each folder of tests is named after the package it tests; project-wide checks stay at the top."""
    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders <= set(LAYERS), (
        f"test folders without a package: {sorted(folders - set(LAYERS))}"
    )
    assert sorted(p.name for p in tests.glob("test_*.py")) == [
        "test_architecture.py",
        "test_bench_smoke.py",
        "test_layers.py",
        "test_toolchain.py",
    ]
