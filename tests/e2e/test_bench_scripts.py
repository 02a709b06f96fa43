"""The benchmarks run as scripts (`python bench/X.py`): bench/ is then first on sys.path, so a
bench named like a standard-library module would shadow it for every other bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_bench_script_shadows_a_standard_library_module() -> None:
    names = {p.stem for p in (ROOT / "bench").glob("*.py")}
    assert names & set(sys.stdlib_module_names) == set()


def test_the_fuzz_bench_runs_as_a_script_and_accounts_for_every_message() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--count", "60", "--json"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["received"] >= 60 and figures["crashed"] == 0 and figures["unaccounted"] == 0


def test_the_ingest_bench_prints_its_figures_as_json() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "ingest.py"), "--messages", "200", "--repeat", "1",
                           "--json"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["messages"] == 200 and figures["dead_lettered"] == 0
    assert figures["measurements"] >= 200 and figures["observations"] > 0
    assert figures["normalize_msgs_per_s"] > 0 and figures["ingest_to_store_msgs_per_s"] > 0
    assert sum(s["messages"] for s in figures["sources"].values()) == 200
