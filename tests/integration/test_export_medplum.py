"""`vigil export` by paged search from a third-party FHIR server: Medplum's FHIR router on loopback
(tests/medplum/). Its search pages by `_offset` with `next` links and it has no type-level `_history`, so
the export reads by `_lastUpdated` window and reports that deletes are not visible."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from analytics.export import run_export
from analytics.export.http import FhirHttp
from analytics.export.remote_source import FhirServerSource
from tests.support.medplum import MedplumServer


def _put(base: str, resource: dict) -> dict:
    r = httpx.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource,
                  headers={"Content-Type": "application/fhir+json"}, timeout=30)
    assert r.status_code in (200, 201), r.text
    return r.json()


def _lake(dest: Path) -> list[dict]:
    files = sorted((dest / "result").rglob("*.ndjson"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_paged_search_export_from_medplum(medplum: MedplumServer, tmp_path: Path) -> None:
    medplum.reset()
    base = medplum.url
    for i in range(3):
        _put(base, {"resourceType": "Patient", "id": f"11111111-0000-4000-8000-00000000000{i}", "active": True})
    for i in range(12):
        _put(base, {"resourceType": "Observation", "id": f"22222222-0000-4000-8000-0000000000{i:02d}",
                    "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "valueQuantity": {"value": 60 + i, "unit": "/min"}})
    time.sleep(0.01)
    source = FhirServerSource(FhirHttp(base), ["Patient", "Observation"], page_size=5)
    lake = tmp_path / "lake"
    try:
        first = run_export(None, lake, source=source, grace_s=0)
        assert first.resources == {"Observation": 12, "Patient": 3}
        assert first.methods == {"Patient": "search", "Observation": "search"}
        rows = _lake(lake)
        assert len(rows) == len({r["id"] for r in rows}) == 15
        for r in rows:
            assert httpx.get(f"{base}/{r['resourceType']}/{r['id']}", timeout=30).json() == r

        changed = _put(base, {"resourceType": "Observation", "id": "22222222-0000-4000-8000-000000000003",
                              "status": "amended", "code": {"coding": [{"system": "http://loinc.org",
                                                                         "code": "8867-4"}]},
                              "valueQuantity": {"value": 99, "unit": "/min"}})
        httpx.delete(f"{base}/Observation/22222222-0000-4000-8000-000000000004", timeout=30).raise_for_status()
        time.sleep(0.01)
        second = run_export(None, lake, source=source, grace_s=0)
        assert second.resources == {"Observation": 1} and second.deleted == {}
        assert second.deletes_not_seen == ["Observation", "Patient"]
        assert changed in _lake(lake)
    finally:
        source.close()
