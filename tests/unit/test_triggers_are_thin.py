"""Each function in `triggers/` decodes its binding and calls one handler with dependencies the
composition root built (docs/architecture.md): no decisions, loops or error handling of its own,
so what a function does can be tested without Azure's worker, through the handler it calls."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTROL_FLOW = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.Match)


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted((ROOT / "triggers").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "function_name"
                    for d in node.decorator_list):
                found.append((f"{path.name}:{node.name}", node))
    return found


def test_every_function_app_function_is_found() -> None:
    names = {name.split(":")[1] for name, _ in _functions()}
    assert {"on_fhir_event", "on_acs_event", "alert_sweep", "fhir_notification", "acknowledge_alert",
            "console", "http_ingest", "ingest_device_messages"} <= names


def test_trigger_functions_hold_no_control_flow() -> None:
    offending = {name: type(stmt).__name__ for name, fn in _functions()
                 for stmt in ast.walk(fn) if isinstance(stmt, CONTROL_FLOW)}
    assert offending == {}


def test_trigger_modules_assemble_no_dependencies() -> None:
    """Handler dependencies come from `runtime.bootstrap` (its `*_deps` functions): no dataclass
    of deps, messaging or HTTP app is built in a trigger module."""
    for path in sorted((ROOT / "triggers").glob("*.py")):
        tree = ast.parse(path.read_text())
        built = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and (n.func.id.endswith("Deps") or n.func.id in ("Messaging", "RouteRegistry", "HttpApp"))]
        assert built == [], f"{path.name} builds {built}"
