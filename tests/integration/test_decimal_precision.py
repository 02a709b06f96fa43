"""Quantity values keep the digits they were written with, through the store and the HTTP adapter.

FHIR decimals keep their precision ("0.010 is regarded as different to 0.01"): a weight sent as
81.40 is stored, served and sent on as 81.40, not 81.4. The tests read the JSON text itself.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from common.jsonnum import loads
from fhirstore.http_store import HttpFhirStore
from fhirstore.sqlite import SqliteFhirStore
from tests.integration.test_http_store_against_facade import TOKEN, StaticCredential
from tests.support.fhir_server import serve_store
from tests.support.pipeline import add_patient, make_host


def stored_bodies(db: Path, resource_type: str) -> list[str]:
    """The JSON text of each stored version of `resource_type`, as the SQLite file holds it."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT v.body FROM versions v JOIN resources r ON v.vkey >> 20 = r.rid"
                            " WHERE r.type = ? AND v.body IS NOT NULL", (resource_type,)).fetchall()
    return [r[0] for r in rows]


def test_a_weight_sent_as_81_40_is_stored_as_81_40(data_dir: Path) -> None:
    host = make_host(data_dir)
    add_patient(host.services, "p-dec", programs=("heart-failure",))
    host.publish_device_messages([
        # A JSON number and a JSON string, as devices send both.
        b'{"deviceId": "p-dec-dev", "patientId": "p-dec", "type": "body_weight",'
        b' "time": "2026-11-20T07:00:00Z", "values": {"weight": 81.40}}',
        b'{"deviceId": "p-dec-dev", "patientId": "p-dec", "type": "body_weight",'
        b' "time": "2026-11-20T08:00:00Z", "values": {"weight": "80.90"}}',
    ])
    assert host.run_until_idle(timeout_s=60)
    bodies = [b for b in stored_bodies(data_dir / "fhir.db", "Observation") if "29463-7" in b]
    assert len(bodies) == 2
    assert any('"value":81.40,' in b for b in bodies), bodies
    assert any('"value":80.90,' in b for b in bodies), bodies
    # Read back, the value is the float rules compute with, and keeps its token.
    (obs,) = [o for o in (host.services.store.search("Observation", {"code": "29463-7"}).resources)
              if o["effectivePeriod"]["start"].startswith("2026-11-20T07")]
    assert obs["valueQuantity"]["value"] == 81.4 and str(obs["valueQuantity"]["value"]) == "81.40"


def test_the_http_adapter_sends_and_reads_decimals_as_written(tmp_path: Path) -> None:
    db = tmp_path / "fhir.db"
    resource = loads(b'{"resourceType": "Observation", "id": "w-1", "status": "final",'
                     b' "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},'
                     b' "effectiveDateTime": "2026-11-20T07:00:00Z",'
                     b' "valueQuantity": {"value": 22.40, "unit": "kg", "system": "http://unitsofmeasure.org",'
                     b' "code": "kg"}}')
    with SqliteFhirStore(db) as store, serve_store(store, token=TOKEN) as base_url, \
            HttpFhirStore(base_url, credential=StaticCredential(TOKEN), max_retries=1, timeout=10) as http:
        http.update(resource)
        (body,) = stored_bodies(db, "Observation")
        assert '"value":22.40,' in body  # what the server received and stored
        assert str(http.read("Observation", "w-1")["valueQuantity"]["value"]) == "22.40"  # and serves
