"""The SQL-on-FHIR v2 conformance suite: run its test files, write its report format.

A test file holds ``resources`` and ``tests``; a test passes when the view gives the ``expect`` rows (in any
order), the ``expectColumns`` (in order), or fails with an error when ``expectError`` is true. The report is
``{file: {"tests": [{"name", "result": {"passed", "error"?}}]}}`` (``test-report.schema.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.views.definition import ViewDefinitionError, compile_view
from analytics.views.runner import run_view


@dataclass(frozen=True)
class Outcome:
    file: str
    name: str
    passed: bool
    error: str | None = None

    @property
    def key(self) -> str:
        """``file.json: test title``, the form ``expected-failures.txt`` lists."""
        return f"{self.file}: {self.name}"


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _row_key(row: dict[str, Any]) -> str:
    return json.dumps(_canonical(row), sort_keys=True)


def run_test(test: dict[str, Any], resources: list[dict[str, Any]]) -> tuple[bool, str | None]:
    """Run one suite test; return (passed, why it failed)."""
    try:
        view = compile_view(test.get("view"))
        rows = run_view(view, resources)
    except ViewDefinitionError as exc:
        if test.get("expectError"):
            return True, None
        return False, f"unexpected error: {exc}"
    if test.get("expectError"):
        return False, f"expected an error, got {len(rows)} rows"
    if "expectColumns" in test:
        got = view.column_names()
        if got != test["expectColumns"]:
            return False, f"columns {got} != expected {test['expectColumns']}"
        return True, None
    expected = sorted(_row_key(r) for r in test.get("expect", []))
    actual = sorted(_row_key(r) for r in rows)
    if expected != actual:
        missing = [r for r in expected if r not in actual]
        extra = [r for r in actual if r not in expected]
        return False, f"rows differ: missing {missing[:3]}, unexpected {extra[:3]}"
    return True, None


def run_suite(directory: Path) -> list[Outcome]:
    """Every test of every ``*.json`` file in ``directory``, in file then test order."""
    outcomes: list[Outcome] = []
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no SQL-on-FHIR test files (*.json) in {directory}")
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        resources = data.get("resources", [])
        for test in data.get("tests", []):
            passed, error = run_test(test, resources)
            outcomes.append(Outcome(path.name, test.get("title", "?"), passed, error))
    return outcomes


def report(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """The suite's report format (``test-report.schema.json``)."""
    out: dict[str, Any] = {}
    for o in outcomes:
        result: dict[str, Any] = {"passed": o.passed}
        if o.error:
            result["error"] = o.error
        out.setdefault(o.file, {"tests": []})["tests"].append({"name": o.name, "result": result})
    return out
