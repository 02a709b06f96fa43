"""The import graph of the app's packages has no cycles: no module reaches itself through imports,
counting imports inside functions as well (grimp reads every import statement), so a cycle cannot
be dodged by moving an import into a function. import-linter's `acyclic_siblings` contract checks
sibling packages; this checks modules."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "fhirstore", "ingest", "rules", "handlers", "notifications", "runtime", "triggers",
            "analytics", "console")
# Packages whose modules import each other only at module level: a function-local import of one of
# our modules there would be a cycle dodged, not a heavy optional dependency deferred.
NO_LOCAL_IMPORTS = ("ingest/templates", "rules")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.find_modules_directly_imported_by(target)))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_the_app_has_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert {"rules.model", "ingest.templates.fhir", "runtime.cli"} <= graph.modules  # the app, not a namesake
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y"]]


def test_template_and_rule_modules_import_our_modules_at_module_level() -> None:
    local = []
    for folder in NO_LOCAL_IMPORTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] in PACKAGES:
                            local.append(f"{path.relative_to(ROOT)}:{inner.lineno} {inner.module}")
                        elif isinstance(inner, ast.Import) and any(a.name.split(".")[0] in PACKAGES
                                                                    for a in inner.names):
                            local.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert local == []
