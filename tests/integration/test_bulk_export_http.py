"""FHIR Bulk Data $export over HTTP on loopback, following the spec's flow step by step
(https://hl7.org/fhir/uv/bulkdata/export.html): kick-off, status polling, download, delete."""

from __future__ import annotations

import json
import stat
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from common.clock import FixedClock
from runtime.http_server import running_server
from tests.support.pipeline import DAYTIME, make_host

TOKEN = "bulk-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASYNC = {**AUTH, "Prefer": "respond-async", "Accept": "application/fhir+json"}


def _obs(id: str, patient: str) -> dict:
    return {"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": 70, "unit": "/min"}}


@pytest.fixture
def served(data_dir: Path):
    clock = FixedClock(DAYTIME)
    host = make_host(data_dir, clock, local_token=TOKEN)
    host.acquire()
    store = host.services.store
    for pid in ("p1", "p2"):
        store.update({"resourceType": "Patient", "id": pid, "active": True})
        clock.advance(timedelta(seconds=1))
    store.update(_obs("o1", "p1"))
    clock.advance(timedelta(seconds=1))
    store.update(_obs("o2", "p2"))
    clock.advance(timedelta(seconds=1))
    store.update({"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                  "member": [{"entity": {"reference": "Patient/p1"}}]})
    clock.advance(timedelta(seconds=1))
    store.update({"resourceType": "Observation", "id": "gone", "status": "final", "code": {"text": "x"},
                  "subject": {"reference": "Patient/p1"}})
    store.delete("Observation", "gone")
    with running_server(host, TOKEN) as url:
        yield host, url, clock
    host.release()
    host.services.close()


def _export(url: str, path: str, params: dict | None = None) -> tuple[str, dict]:
    """Kick off, poll until complete; the status URL and the manifest."""
    kick = httpx.get(f"{url}/fhir/{path}", params=params, headers=ASYNC)
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith(url)
    for _ in range(200):
        poll = httpx.get(status_url, headers=AUTH)
        if poll.status_code == 200:
            assert poll.headers["content-type"].startswith("application/json")
            return status_url, poll.json()
        assert poll.status_code == 202, poll.text
        assert "X-Progress" in poll.headers
        time.sleep(0.05)
    raise AssertionError("export did not complete")


def _download(manifest: dict) -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        assert httpx.get(item["url"]).status_code == 401  # requiresAccessToken
        resp = httpx.get(item["url"], headers=AUTH)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/fhir+ndjson"
        lines = [json.loads(line) for line in resp.text.splitlines()]
        assert all(r["resourceType"] == item["type"] for r in lines)
        files[item["type"]] = lines
    return files


def test_system_export_downloads_every_stored_resource_then_delete_removes_the_job(served, data_dir) -> None:
    host, url, _ = served
    status_url, manifest = _export(url, "$export")
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("/fhir/$export")
    assert manifest["transactionTime"].startswith("2026-11-20T15:00:0")
    files = _download(manifest)
    assert sorted(files) == ["Group", "Observation", "Patient"]
    for resource_type, resources in files.items():
        for resource in resources:  # each line is the stored resource, as a read returns it
            assert resource == host.services.store.read(resource_type, resource["id"])
    assert sorted(r["id"] for r in files["Observation"]) == ["o1", "o2"]  # the deleted one is not there
    # Jobs live under the data directory, owner-only.
    job_dir = data_dir / "bulk-export" / status_url.rsplit("/", 1)[1]
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in job_dir.iterdir())
    # Delete: 202, then the status and the files are gone.
    assert httpx.delete(status_url, headers=AUTH).status_code == 202
    assert httpx.get(status_url, headers=AUTH).status_code == 404
    assert httpx.get(manifest["output"][0]["url"], headers=AUTH).status_code == 404
    assert not job_dir.exists()


def test_type_and_since_filter(served) -> None:
    _, url, _ = served
    _, manifest = _export(url, "$export", {"_type": "Observation,Group"})
    assert sorted(_download(manifest)) == ["Group", "Observation"]
    # o2 was written at 15:00:03; _since after o1 (15:00:02) leaves o2 and the Group.
    _, manifest = _export(url, "$export", {"_since": "2026-11-20T15:00:02.500Z"})
    files = _download(manifest)
    assert {t: [r["id"] for r in rs] for t, rs in files.items()} == {"Observation": ["o2"], "Group": ["g1"]}
    assert manifest["request"].endswith("_since=2026-11-20T15%3A00%3A02.500Z")
    # Bulk Data 2.0 `deleted`: the deletes since _since, one transaction Bundle of DELETE entries a line.
    [deleted] = manifest["deleted"]
    assert deleted["type"] == "Bundle" and deleted["count"] == 1
    resp = httpx.get(deleted["url"], headers=AUTH)
    [bundle] = [json.loads(line) for line in resp.text.splitlines()]
    assert bundle["type"] == "transaction"
    assert [e["request"] for e in bundle["entry"]] == [{"method": "DELETE", "url": "Observation/gone"}]
    # Without _since there is nothing to compare with, so no deletes are listed.
    _, manifest = _export(url, "$export")
    assert manifest["deleted"] == []


def test_the_key_in_a_code_parameter_stays_out_of_the_manifest(served, data_dir) -> None:
    _, url, _ = served
    kick = httpx.get(f"{url}/fhir/$export?_type=Patient&code={TOKEN}", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    status_url = kick.headers["Content-Location"]
    for _ in range(200):
        poll = httpx.get(status_url, headers=AUTH)
        if poll.status_code == 200:
            break
        time.sleep(0.05)
    assert poll.json()["request"] == f"{url}/fhir/$export?_type=Patient"
    assert not any(TOKEN in f.read_text() for f in (data_dir / "bulk-export").rglob("*.json"))


def test_patient_and_group_level_return_compartment_resources(served) -> None:
    _, url, _ = served
    _, manifest = _export(url, "Patient/$export")
    files = _download(manifest)
    assert sorted(files) == ["Observation", "Patient"]  # the Group is in no patient's compartment
    assert sorted(r["id"] for r in files["Patient"]) == ["p1", "p2"]
    _, manifest = _export(url, "Group/g1/$export")
    files = _download(manifest)
    assert {t: [r["id"] for r in rs] for t, rs in files.items()} == {"Observation": ["o1"], "Patient": ["p1"]}
    missing = httpx.get(f"{url}/fhir/Group/nope/$export", headers=ASYNC)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_kick_off_refuses_what_it_cannot_honour(served) -> None:
    _, url, _ = served
    assert httpx.get(f"{url}/fhir/$export", headers=AUTH | {"Accept": "application/fhir+json"}).status_code == 400
    assert httpx.get(f"{url}/fhir/$export", headers={"Prefer": "respond-async"}).status_code == 401
    for params in ({"_typeFilter": "Observation?code=x"}, {"_outputFormat": "text/csv"}, {"_since": "yesterday"}):
        resp = httpx.get(f"{url}/fhir/$export", params=params, headers=ASYNC)
        assert resp.status_code == 400, params
        assert resp.json()["issue"][0]["diagnostics"]
    assert httpx.get(f"{url}/fhir/$export-status/{'0' * 32}", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/fhir/$export-file/{'0' * 32}/..%2Ffhir.db", headers=AUTH).status_code == 404


def test_post_kick_off_with_parameters(served) -> None:
    _, url, _ = served
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"}]}
    kick = httpx.post(f"{url}/fhir/$export", json=body, headers=ASYNC)
    assert kick.status_code == 202
    status_url = kick.headers["Content-Location"]
    for _ in range(200):
        poll = httpx.get(status_url, headers=AUTH)
        if poll.status_code == 200:
            break
        time.sleep(0.05)
    assert [o["type"] for o in poll.json()["output"]] == ["Patient"]


def test_a_restart_keeps_a_finished_job_and_redoes_an_interrupted_one(served, data_dir) -> None:
    host, url, _ = served
    status_url, manifest = _export(url, "$export", {"_type": "Patient"})
    job_id = status_url.rsplit("/", 1)[1]
    # Simulate a job a restart interrupted: its request only.
    interrupted = data_dir / "bulk-export" / ("a" * 32)
    interrupted.mkdir(mode=0o700)
    (interrupted / "request.json").write_text((data_dir / "bulk-export" / job_id / "request.json").read_text())
    with running_server(host, TOKEN) as url2:  # a new server process's state: nothing in memory
        again = httpx.get(f"{url2}/fhir/$export-status/{job_id}", headers=AUTH)
        assert again.status_code == 200
        assert [o["type"] for o in again.json()["output"]] == ["Patient"]
        for _ in range(200):
            poll = httpx.get(f"{url2}/fhir/$export-status/{'a' * 32}", headers=AUTH)
            if poll.status_code == 200:
                break
            assert poll.status_code == 202
            time.sleep(0.05)
        assert [r["id"] for r in _download(poll.json())["Patient"]] == ["p1", "p2"]


def test_polling_a_running_job_reports_progress_and_delete_cancels_it(served, data_dir, monkeypatch) -> None:
    import threading

    import runtime.bulk_export as bulk

    _, url, _ = served
    release = threading.Event()
    real = bulk._write_type

    def held(*args, **kwargs):  # the job waits here until the test lets it go
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(bulk, "_write_type", held)
    kick = httpx.get(f"{url}/fhir/$export", headers=ASYNC)
    status_url = kick.headers["Content-Location"]
    poll = httpx.get(status_url, headers=AUTH)
    assert poll.status_code == 202 and poll.headers["X-Progress"].startswith("in progress")
    assert httpx.get(status_url, headers=AUTH).status_code == 202  # still running: not started twice
    job_dir = data_dir / "bulk-export" / status_url.rsplit("/", 1)[1]
    assert job_dir.exists()
    threading.Timer(0.2, release.set).start()
    assert httpx.delete(status_url, headers=AUTH).status_code == 202
    assert httpx.get(status_url, headers=AUTH).status_code == 404
    assert not job_dir.exists()
