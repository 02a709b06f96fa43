"""`.funcignore` keeps tests, tools and local state out of the deployment package, and nothing the
app imports or reads at run time (Core Tools reads it with gitignore semantics)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pathspec

ROOT = Path(__file__).resolve().parents[2]


def _spec() -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).exists()]


def test_development_files_are_left_out() -> None:
    spec = _spec()
    for path in ("tests/unit/test_funcignore.py", "bench/pipeline.py", "docs/deploy-azure.md",
                 "rules/library/tests/copd.yaml", ".venv/bin/python", ".venv-worker/bin/python",
                 ".vigil/fhir.db", "local.settings.json", "requirements-dev.txt", ".ci/run",
                 "runtime/__pycache__/cli.cpython-311.pyc"):
        assert spec.match_file(path), f"{path} would be deployed"


def test_everything_the_app_needs_is_deployed() -> None:
    spec = _spec()
    shipped = [p for p in _tracked() if not spec.match_file(p)]
    assert {"function_app.py", "host.json", "requirements.txt"} <= set(shipped)
    for package in ("common", "fhirstore", "ingest", "rules", "handlers", "notifications", "runtime", "triggers"):
        tracked = [p for p in _tracked() if p.startswith(package + "/") and not p.startswith("rules/library/tests/")]
        assert tracked and all(p in shipped for p in tracked), f"part of {package}/ would not be deployed"
    assert any(p.startswith("rules/library/") and p.endswith(".yaml") for p in shipped)
    assert not any(p.startswith(("tests/", "bench/", "docs/")) for p in shipped)
