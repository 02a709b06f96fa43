"""Incremental export: round trip through NDJSON and Parquet, changes and deletes only on the next run,
and a run killed with SIGKILL resumes with no gap and no duplicate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analytics.export import ExportError, run_export
from analytics.export.schema import strip_nulls
from common.clock import FixedClock
from tests.unit.analytics.fixtures import observation, seed

REPO = Path(__file__).resolve().parents[3]


def _read(dest: Path, kind: str = "result") -> tuple[list[dict], list[dict]]:
    nd = [json.loads(line) for f in sorted((dest / kind).rglob("*.ndjson")) for line in f.read_text().splitlines()]
    pa_rows = [strip_nulls(r) for f in sorted((dest / kind).rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return nd, pa_rows


def _stored(store, resources: list[dict]) -> list[dict]:  # noqa: ANN001
    return [store.read(r["resourceType"], r["id"]) for r in resources]


def test_round_trip_ndjson_and_parquet_equal_the_stored_json(tmp_path: Path, clock: FixedClock) -> None:
    store = seed(tmp_path / "fhir.db", clock)
    summary = run_export(tmp_path / "fhir.db", tmp_path / "lake", clock=clock, grace_s=0)
    assert summary.resources == {"Observation": 30, "Patient": 3} and summary.deleted == {}
    nd, pq_rows = _read(tmp_path / "lake")
    assert len(nd) == len(pq_rows) == 33
    assert nd == _stored(store, nd)
    assert sorted(pq_rows, key=lambda r: (r["resourceType"], r["id"])) == sorted(
        nd, key=lambda r: (r["resourceType"], r["id"])
    )
    # Nested, not JSON strings: the quantity is a struct with a double inside.
    schema = pq.read_schema(next((tmp_path / "lake" / "result" / "Observation").rglob("*.parquet")))
    assert str(schema.field("valueQuantity").type).startswith("struct<value: double")
    # FHIR-Analytics-Pipelines layout: result/Type/yyyy/MM/dd/run/
    rel = next((tmp_path / "lake" / "result" / "Patient").rglob("*.ndjson")).relative_to(tmp_path / "lake")
    assert rel.parts[:2] == ("result", "Patient") and len(rel.parts[2]) == 4 and rel.parts[5] == "r000001"


def test_second_run_exports_only_changes_and_deletes(tmp_path: Path, clock: FixedClock) -> None:
    store = seed(tmp_path / "fhir.db", clock)
    lake = tmp_path / "lake"
    run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    again = run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    assert again.total == 0 and again.files == 0

    clock.advance(timedelta(days=1))
    store.update(observation(3, "pat-0", 99.0))
    store.delete("Observation", "obs-4")
    store.update(observation(100, "pat-1", 70.0))
    third = run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    assert third.resources == {"Observation": 2} and third.deleted == {"Observation": 1}
    nd, pq_rows = _read(lake)
    latest = {}
    for r in nd:
        latest[r["id"]] = r
    assert latest["obs-3"]["valueQuantity"]["value"] == 99.0 and latest["obs-3"]["meta"]["versionId"] == "2"
    tomb_nd, tomb_pq = _read(lake, "deleted")
    assert [(t["id"], t["meta"]["versionId"]) for t in tomb_nd] == [("obs-4", "2")]
    assert tomb_pq == tomb_nd
    assert len(nd) == len(pq_rows) == 35


def _export_cmd(store: Path, lake: Path) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", "--data-dir", str(store.parent), "export", str(lake),
            "--chunk-rows", "5", "--format", "ndjson,parquet"]


@pytest.mark.slow
def test_sigkill_mid_export_then_restart_has_no_gap_and_no_duplicate(tmp_path: Path, clock: FixedClock) -> None:
    store = seed(tmp_path / "fhir.db", clock, patients=5, observations=1500)
    lake = tmp_path / "lake"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_export_cmd(tmp_path / "fhir.db", lake), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = lake / "_vigil" / "staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(staging.rglob("*.parquet"))) < 20:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((lake / "_vigil" / "state.json").read_text())["pending"], "killed before it finished"

    done = subprocess.run(_export_cmd(tmp_path / "fhir.db", lake), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    nd, pq_rows = _read(lake)
    ids = Counter((r["resourceType"], r["id"]) for r in nd)
    assert len(ids) == 1505 and set(ids.values()) == {1}
    assert Counter((r["resourceType"], r["id"]) for r in pq_rows) == ids
    assert nd[:3] == _stored(store, nd[:3])
    assert not list(staging.rglob("*"))


def test_failure_while_committing_is_redone_without_duplicates(tmp_path: Path, clock: FixedClock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seed(tmp_path / "fhir.db", clock)
    lake = tmp_path / "lake"
    real_rename = Path.rename
    calls = {"n": 0}

    def flaky(self: Path, target: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", flaky)
    with pytest.raises(ExportError, match="No space left on device"):
        run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    monkeypatch.setattr(Path, "rename", real_rename)
    summary = run_export(tmp_path / "fhir.db", lake, clock=clock, grace_s=0)
    assert summary.resumed and summary.run_id == "r000001"
    nd, pq_rows = _read(lake)
    assert len(nd) == len(pq_rows) == 33 == len({(r["resourceType"], r["id"]) for r in nd})
