"""HttpFhirStore against a real FHIR REST server on loopback (the embedded store behind `fhirstore.rest`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound, Unauthorized
from fhirstore.http_store import HttpFhirStore
from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from tests.support.fhir_server import serve_store

TOKEN = "t"
SBP = "http://loinc.org|8480-6"
HR = "http://loinc.org|8867-4"


class StaticCredential:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


def reading(patient: str, code: str, value: float, when: str, key: str | None = None) -> dict[str, Any]:
    system, _, loinc = code.partition("|")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org"},
    }
    if key:
        resource["identifier"] = [{"system": "urn:vigil:reading", "value": key}]
    return resource


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module (shutdown costs ~0.5 s); tests keep apart by their own patient ids."""
    path: Path = tmp_path_factory.mktemp("fhir") / "fhir.db"
    with SqliteFhirStore(path) as store, serve_store(store, token=TOKEN) as base_url:
        yield base_url


@pytest.fixture
def pid() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def http(server: str) -> Iterator[HttpFhirStore]:
    with HttpFhirStore(server, credential=StaticCredential(TOKEN), max_retries=1, timeout=10) as store:
        yield store


def test_create_read_vread(http: HttpFhirStore, pid: str) -> None:
    created = http.create(reading(pid, SBP, 150, "2024-05-01T08:00:00Z"))
    assert created.outcome == "created" and created.version_id
    current = http.read("Observation", created.id)
    assert current["valueQuantity"]["value"] == 150
    assert http.vread("Observation", created.id, created.version_id)["id"] == created.id
    with pytest.raises(ResourceNotFound):
        http.read("Observation", "does-not-exist")


def test_conditional_create_twice_is_exists(http: HttpFhirStore, pid: str) -> None:
    resource = reading(pid, SBP, 150, "2024-05-01T08:00:00Z", key=f"{pid}-0001")
    first = http.create(resource, if_none_exist=f"identifier=urn:vigil:reading|{pid}-0001")
    second = http.create(resource, if_none_exist=f"identifier=urn:vigil:reading|{pid}-0001")
    assert (first.outcome, second.outcome) == ("created", "exists")
    assert second.id == first.id and not second.wrote
    assert http.search("Observation", {"identifier": f"urn:vigil:reading|{pid}-0001"}).total == 1


def test_update_noop_then_change_then_stale_if_match(http: HttpFhirStore, pid: str) -> None:
    created = http.create(reading(pid, SBP, 150, "2024-05-01T08:00:00Z"))
    same = dict(created.resource or {})
    same.pop("meta")
    unchanged = http.update(same)
    assert (unchanged.outcome, unchanged.version_id) == ("unchanged", created.version_id)

    changed = {**same, "valueQuantity": {**same["valueQuantity"], "value": 155}}
    updated = http.update(changed, if_match=created.version_id)
    assert updated.outcome == "updated" and updated.version_id != created.version_id
    assert http.vread("Observation", created.id, created.version_id)["valueQuantity"]["value"] == 150

    history = http.history("Observation", created.id)
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]

    with pytest.raises(PreconditionFailed):
        http.update({**same, "status": "amended"}, if_match=created.version_id)


def test_delete_then_gone(http: HttpFhirStore, pid: str) -> None:
    created = http.create(reading(pid, SBP, 150, "2024-05-01T08:00:00Z"))
    assert http.delete("Observation", created.id).outcome == "deleted"
    with pytest.raises(ResourceGone):
        http.read("Observation", created.id)
    assert http.delete("Observation", created.id).outcome == "gone"
    assert http.delete("Observation", "never-there").outcome == "gone"
    assert http.vread("Observation", created.id, created.version_id)["id"] == created.id


def test_search_by_subject_code_date_and_paging(http: HttpFhirStore, pid: str) -> None:
    for day in range(1, 8):
        http.create(reading(pid, SBP, 140 + day, f"2024-05-0{day}T08:00:00Z"))
    http.create(reading(pid, HR, 70, "2024-05-03T08:00:00Z"))
    http.create(reading(f"{pid}-other", SBP, 130, "2024-05-03T08:00:00Z"))

    params = {
        "subject": f"Patient/{pid}",
        "code": SBP,
        "date": ["ge2024-05-02", "lt2024-05-06"],
        "_count": "2",
    }
    page = http.search("Observation", params)
    assert len(page.resources) == 2 and page.next_params is not None
    found = search_all(http, "Observation", params)
    assert sorted(r["effectiveDateTime"][:10] for r in found) == [
        "2024-05-02",
        "2024-05-03",
        "2024-05-04",
        "2024-05-05",
    ]
    counted = http.search("Observation", {"subject": f"Patient/{pid}", "_summary": "count"})
    assert (counted.total, counted.resources) == (8, [])


def test_transaction_bundle(http: HttpFhirStore, pid: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": pid, "active": True},
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            },
            {
                "resource": reading(pid, SBP, 182, "2024-05-01T08:00:00Z", key=f"{pid}-tx"),
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"identifier=urn:vigil:reading|{pid}-tx",
                },
            },
        ],
    }
    response = http.transaction(bundle)
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in response["entry"]] == ["201", "201"]
    assert http.read("Patient", pid)["active"] is True
    assert http.search("Observation", {"subject": f"Patient/{pid}"}).total == 1


def test_server_requires_the_bearer_token(server: str) -> None:
    with HttpFhirStore(server, max_retries=0) as anonymous, pytest.raises(Unauthorized):
        anonymous.read("Patient", "p1")
    wrong = StaticCredential("not-the-token")
    with HttpFhirStore(server, credential=wrong, max_retries=0) as store, pytest.raises(Unauthorized) as info:
        store.read("Patient", "p1")
    assert wrong.calls == 2  # refreshed once on the 401, then gave up
    assert "not-the-token" not in str(info.value)
