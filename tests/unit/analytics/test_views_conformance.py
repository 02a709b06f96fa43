"""The official SQL-on-FHIR v2 conformance suite, run through `vigil views test`, against the checked-in list
of known failures (which may only shrink)."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.cli import main
from tests.support.compat import compat_path, require

REPO = Path(__file__).resolve().parents[3]


SUITE = compat_path("sql-on-fhir-v2", "tests")
EXPECTED = REPO / "analytics" / "views" / "expected-failures.txt"


def _suite_dir() -> Path:
    return require(SUITE)


def _expected_failures() -> set[str]:
    lines = EXPECTED.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_suite_matches_expected_failures(tmp_path: Path, data_dir: Path) -> None:
    report_path = tmp_path / "report.json"
    main(["--data-dir", str(data_dir), "views", "test", str(_suite_dir()), "--report", str(report_path)])
    report = json.loads(report_path.read_text())

    failed = {f"{file}: {t['name']}" for file, body in report.items() for t in body["tests"]
              if not t["result"]["passed"]}
    total = sum(len(body["tests"]) for body in report.values())
    expected = _expected_failures()
    assert total == 134, f"the suite has 134 tests, the report has {total}"
    assert not (failed - expected), f"tests failing that are not in expected-failures.txt: {sorted(failed - expected)}"
    assert not (expected - failed), f"listed as failing but now pass (remove them): {sorted(expected - failed)}"


def test_report_follows_the_suite_schema(tmp_path: Path, data_dir: Path) -> None:
    report_path = tmp_path / "report.json"
    main(["--data-dir", str(data_dir), "views", "test", str(_suite_dir()), "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    schema = json.loads((SUITE.parent / "test-report.schema.json").read_text())
    assert set(report) == {p.name for p in SUITE.glob("*.json")}
    for body in report.values():
        assert set(body) == {"tests"} and body["tests"]
        for test in body["tests"]:
            assert isinstance(test["name"], str)
            assert isinstance(test["result"]["passed"], bool)
            assert set(test["result"]) <= set(schema["patternProperties"][".*"]["properties"]["tests"]["items"]
                                                ["properties"]["result"]["properties"])
