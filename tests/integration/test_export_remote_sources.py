"""`vigil export` from a FHIR server, against the facade `vigil serve` serves on loopback: paged search by
`_lastUpdated` windows (next links followed; deletes not visible, and the summary says so) and the Bulk
Data `$export` client (kick-off, poll, download, `_since` = the last run's transactionTime)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from analytics.export import run_export
from analytics.export.bulk_source import BulkExportSource
from analytics.export.http import FhirHttp
from analytics.export.remote_source import FhirServerSource
from analytics.export.schema import strip_nulls
from common.clock import FixedClock
from runtime.http_server import running_server
from tests.support.pipeline import DAYTIME, make_host

TOKEN = "lake-test-token"


def _obs(i: int, patient: str, value: float) -> dict:
    return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-11-20T09:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


@pytest.fixture
def served(data_dir: Path):
    clock = FixedClock(DAYTIME)
    host = make_host(data_dir, clock, local_token=TOKEN)
    host.acquire()
    store = host.services.store
    for pid in ("p1", "p2"):
        store.update({"resourceType": "Patient", "id": pid, "active": True})
    # More than one page: the source asks 50 a page.
    for i in range(120):
        store.update(_obs(i, "p1" if i % 2 else "p2", 60 + i * 0.5))
        clock.advance(timedelta(milliseconds=7))
    clock.advance(timedelta(seconds=1))
    with running_server(host, TOKEN) as url:
        yield host, f"{url}/fhir", clock
    host.release()
    host.services.close()


def _lake(dest: Path, kind: str = "result") -> tuple[list[dict], list[dict]]:
    import pyarrow.parquet as pq

    nd = [json.loads(line) for f in sorted((dest / kind).rglob("*.ndjson")) for line in f.read_text().splitlines()]
    rows = [strip_nulls(r) for f in sorted((dest / kind).rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return nd, rows


def _search(url: str) -> FhirServerSource:
    return FhirServerSource(FhirHttp(url, token=lambda: TOKEN), ["Patient", "Observation"], page_size=50)


def test_paged_search_exports_every_resource_then_only_changes_and_says_deletes_are_unseen(served, tmp_path) -> None:
    host, url, clock = served
    store = host.services.store
    lake = tmp_path / "lake"
    source = _search(url)
    try:
        first = run_export(None, lake, source=source, clock=clock, grace_s=0)
        assert first.resources == {"Observation": 120, "Patient": 2}
        assert first.methods == {"Patient": "search", "Observation": "search"}  # no type-level _history there
        assert source.http.requests >= 1 + 3 + 5  # metadata; per type two counts and its pages (3 of Observation)
        nd, rows = _lake(lake)
        assert len(nd) == len({(r["resourceType"], r["id"]) for r in nd}) == 122
        assert nd == [store.read(r["resourceType"], r["id"]) for r in nd]
        assert sorted(rows, key=lambda r: (r["resourceType"], r["id"])) == \
            sorted(nd, key=lambda r: (r["resourceType"], r["id"]))

        clock.advance(timedelta(seconds=5))
        store.update({**_obs(3, "p1", 99.5)})
        store.delete("Observation", "o4")
        clock.advance(timedelta(seconds=5))
        second = run_export(None, lake, source=source, clock=clock, grace_s=0)
        assert second.resources == {"Observation": 1} and second.deleted == {}
        # A paged search cannot see deletes: the summary names the types whose deletes are not in the lake.
        assert second.deletes_not_seen == ["Observation", "Patient"]
        changed = [r for r in _lake(lake)[0] if r["id"] == "o3"]
        assert [r["valueQuantity"]["value"] for r in changed] == [61.5, 99.5]
        assert run_export(None, lake, source=source, clock=clock, grace_s=0).total == 0
    finally:
        source.close()


def test_bulk_client_exports_through_the_facade_and_the_next_run_asks_since_the_transaction_time(
        served, tmp_path) -> None:
    host, url, clock = served
    store = host.services.store
    lake = tmp_path / "lake"
    source = BulkExportSource(FhirHttp(url, token=lambda: TOKEN), sleep=lambda s: None)
    try:
        first = run_export(None, lake, source=source, clock=clock, grace_s=0)
        assert first.source == "bulk" and first.resources == {"Observation": 120, "Patient": 2}
        nd, rows = _lake(lake)
        assert nd == [store.read(r["resourceType"], r["id"]) for r in nd] and len(rows) == 122
        state = json.loads((lake / "_vigil" / "state.json").read_text())
        newest = max(r["meta"]["lastUpdated"] for r in nd)
        assert state["last_summary"]["window"][1][:23] == newest[:23]  # the window ends at transactionTime

        clock.advance(timedelta(seconds=5))
        store.update(_obs(7, "p1", 42.0))
        store.update({"resourceType": "Patient", "id": "p3", "active": True})
        store.delete("Observation", "o8")
        second = run_export(None, lake, source=source, clock=clock, grace_s=0)
        assert second.resources == {"Observation": 1, "Patient": 1}
        # The facade's manifest lists the deletes since _since (Bulk Data 2.0 `deleted`): tombstones.
        assert second.deleted == {"Observation": 1} and second.deletes_not_seen == []
        gone, _ = _lake(lake, "deleted")
        assert [(g["id"], g["meta"]["versionId"]) for g in gone] == [("o8", "2")]
        # The finished jobs were deleted on the server (DELETE on the status URL).
        assert not list((host.services.settings.path("bulk-export")).glob("*/manifest.json"))
    finally:
        source.close()


def test_the_cli_exports_from_the_facade_and_prints_counts_per_type(served, tmp_path, capsys, monkeypatch) -> None:
    from runtime.cli import main

    host, url, clock = served
    monkeypatch.setenv("VIGIL_EXPORT_FHIR_TOKEN", TOKEN)
    lake = tmp_path / "lake"
    code = main(["--data-dir", str(tmp_path / "cli-data"), "export", str(lake), "--source", "search",
                 "--fhir-url", url, "--type", "Patient,Observation", "--grace", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "from search to" in out and "Observation" in out and "120 resources" in out
    assert "a paged search cannot see deletes" in out


def test_a_server_with_type_history_exports_deletes_as_tombstones(tmp_path) -> None:
    from tests.support.history_server import serve_with_type_history
    from tests.unit.analytics.fixtures import seed

    clock = FixedClock(DAYTIME)
    store = seed(tmp_path / "fhir.db", clock)
    lake = tmp_path / "lake"
    with serve_with_type_history(store, tmp_path / "fhir.db") as url:
        source = FhirServerSource(FhirHttp(url), ["Patient", "Observation"], page_size=7)
        try:
            first = run_export(None, lake, source=source, clock=clock, grace_s=0)
            assert first.methods == {"Patient": "history", "Observation": "history"}
            assert first.resources == {"Observation": 30, "Patient": 3} and first.deletes_not_seen == []
            nd, _ = _lake(lake)
            assert nd == [store.read(r["resourceType"], r["id"]) for r in nd]

            clock.advance(timedelta(minutes=1))
            store.update({**store.read("Observation", "obs-1"), "status": "amended"})
            store.update({**store.read("Observation", "obs-1"), "status": "corrected"})  # twice: the last state
            store.delete("Observation", "obs-2")
            clock.advance(timedelta(minutes=1))
            second = run_export(None, lake, source=source, clock=clock, grace_s=0)
            assert second.resources == {"Observation": 1} and second.deleted == {"Observation": 1}
            gone, _ = _lake(lake, "deleted")
            assert [(g["id"], g["meta"]["versionId"]) for g in gone] == [("obs-2", "2")]
            assert [r["status"] for r in _lake(lake)[0] if r["id"] == "obs-1"] == ["final", "corrected"]
        finally:
            source.close()
        # One export of the embedded store over both windows sees the same end state.
        direct = run_export(tmp_path / "fhir.db", tmp_path / "direct", upto=second.upto)
        assert direct.resources == {"Observation": 29, "Patient": 3} and direct.deleted == {"Observation": 1}
