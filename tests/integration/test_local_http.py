"""The local HTTP server: function routes with Azure-style keys, and /fhir for real FHIR clients."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from runtime.http_server import running_server
from tests.support.pipeline import add_patient, count, make_host, reading

TOKEN = "local-test-token"


@pytest.fixture
def served(data_dir: Path):
    host = make_host(data_dir, local_token=TOKEN)
    host.acquire()
    add_patient(host.services, "p1")
    with running_server(host, TOKEN) as url:
        yield host, url
    host.release()
    host.services.close()


def test_health_is_anonymous_and_ingest_needs_the_key(served) -> None:
    host, url = served
    assert httpx.get(f"{url}/api/health").json() == {"status": "ok"}
    body = reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70})
    assert httpx.post(f"{url}/api/ingest", content=body).status_code == 401
    assert httpx.post(f"{url}/api/ingest", content=body, headers={"x-functions-key": "wrong"}).status_code == 401
    assert count(host.services, "Observation") == 0


def test_ingest_endpoint_reports_what_it_accepted_and_parked(served) -> None:
    host, url = served
    lines = b"\n".join([
        reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70}),
        reading("p1", "spo2", "2026-11-20T07:31:00Z", {"percent": 97}),
        b"{broken",
    ])
    resp = httpx.post(f"{url}/api/ingest", content=lines, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 207
    report = resp.json()
    assert (report["received"], report["written"], report["superseded"], report["dead_lettered"]) == (3, 2, 0, 1)
    assert (report["unaccounted"], report["observations"]["created"]) == (0, 2)
    assert report["reasons"] == {"invalid_json": 1}
    again = httpx.post(f"{url}/api/ingest?code={TOKEN}", content=lines).json()
    assert (again["written"], again["observations"]["created"], again["observations"]["unchanged"]) == (2, 0, 2)
    assert count(host.services, "Observation") == 2


def test_unknown_routes_and_methods_are_refused(served) -> None:
    _, url = served
    assert httpx.get(f"{url}/api/nope").status_code == 404
    assert httpx.get(f"{url}/api/ingest", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    assert httpx.get(f"{url}/elsewhere").status_code == 404


def test_fhirpy_creates_searches_and_reads_through_the_local_fhir_endpoint(served) -> None:
    host, url = served
    assert httpx.get(f"{url}/fhir/metadata").status_code == 401
    client = SyncFHIRClient(f"{url}/fhir", authorization=f"Bearer {TOKEN}")
    obs = client.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject={"reference": "Patient/p1"},
        effectiveDateTime="2026-11-20T08:00:00Z",
        valueQuantity={"value": 66, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    )
    obs.save()
    assert obs.id
    found = client.resources("Observation").search(subject="Patient/p1", code="http://loinc.org|8867-4",
                                                   date="ge2026-11-20").fetch()
    assert [o.id for o in found] == [obs.id]
    fetched = client.reference("Observation", obs.id).to_resource()
    assert fetched["valueQuantity"]["value"] == 66
    # Written through /fhir, it raised a FHIR event like any other write: the pipeline sees it.
    assert host.run_until_idle(timeout_s=30)
    assert host.stats.invocations.get("on_fhir_event", 0) >= 1


def test_cli_ingest_posts_to_a_running_server(served, capsys, monkeypatch, data_dir: Path, tmp_path: Path) -> None:
    host, url = served
    monkeypatch.setenv("VIGIL_LOCAL_TOKEN", TOKEN)
    from runtime.cli import main

    f = tmp_path / "m.jsonl"
    f.write_bytes(reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 61}) + b"\n")
    assert main(["--data-dir", str(data_dir), "ingest", str(f), "--url", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["received"], out["written"], out["unaccounted"], out["observations"]["created"]) == (1, 1, 0, 1)


def test_cli_ingest_prints_the_same_keys_in_process_and_over_http_with_progress(served, capsys, monkeypatch,
                                                                                tmp_path: Path) -> None:
    """One set of keys whichever way `vigil ingest` runs, a bar on stderr, and exit 3 when some
    message was dead-lettered."""
    host, url = served
    monkeypatch.setenv("VIGIL_LOCAL_TOKEN", TOKEN)
    from runtime.cli import main

    f = tmp_path / "m.jsonl"
    f.write_bytes(reading("p1", "heart_rate", "2026-11-20T07:40:00Z", {"bpm": 62}) + b"\n"
                  + reading("nobody", "heart_rate", "2026-11-20T07:40:00Z", {"bpm": 62}) + b"\n")
    assert main(["--data-dir", str(tmp_path / "remote-cli"), "ingest", str(f), "--url", url, "--progress"]) == 3
    captured = capsys.readouterr()
    over_http = json.loads(captured.out)
    assert "messages" in captured.err and "2/2" in captured.err  # the progress bar
    local = tmp_path / "local"
    assert main(["--data-dir", str(local), "ingest", str(f), "--progress"]) == 3
    captured = capsys.readouterr()
    in_process = json.loads(captured.out)
    assert "2/2" in captured.err
    assert set(over_http) == set(in_process)
    assert (over_http["written"], over_http["dead_lettered"]) == (1, 1)
    assert (in_process["written"], in_process["dead_lettered"]) == (0, 2)  # no devices registered locally
