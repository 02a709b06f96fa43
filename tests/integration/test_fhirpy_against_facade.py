"""A real FHIR client (fhirpy) against the embedded store served over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome as OperationOutcomeError
from fhirpy.base.exceptions import ResourceNotFound

from common.clock import FixedClock
from fhirstore.sqlite import SqliteFhirStore
from tests.support.fhir_server import serve_store

TOKEN = "test-token"
LOINC = "http://loinc.org"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteFhirStore]:
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(datetime(2024, 3, 6, tzinfo=UTC))) as s:
        yield s


@pytest.fixture
def base_url(store: SqliteFhirStore) -> Iterator[str]:
    with serve_store(store, token=TOKEN) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> SyncFHIRClient:
    return SyncFHIRClient(base_url, authorization=f"Bearer {TOKEN}", requests_config={"timeout": 30})


def heart_rate(client: SyncFHIRClient, patient, value: int, when: str):
    return client.resource(
        "Observation",
        status="final",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                               "code": "vital-signs"}]}],
        code={"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        subject=patient.to_reference(),
        effectiveDateTime=when,
        valueQuantity={"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    )


def test_create_search_read_update_with_fhirpy(client: SyncFHIRClient, store: SqliteFhirStore) -> None:
    patient = client.resource("Patient", identifier=[{"system": "urn:mrn", "value": "42"}], active=True)
    patient.save()
    other = client.resource("Patient", identifier=[{"system": "urn:mrn", "value": "43"}])
    other.save()
    for value, when in ((72, "2024-03-01T08:00:00Z"), (118, "2024-03-05T21:30:00-05:00"), (64, "2024-03-06T07:00:00Z")):
        heart_rate(client, patient, value, when).save()
    heart_rate(client, other, 80, "2024-03-05T12:00:00Z").save()
    weight = client.resource("Observation", status="final", code={"coding": [{"system": LOINC, "code": "29463-7"}]},
                             subject=patient.to_reference(), effectiveDateTime="2024-03-05T12:00:00Z")
    weight.save()

    found = (client.resources("Observation")
             .search(subject=patient, code=f"{LOINC}|8867-4", date__ge="2024-03-05", date__lt="2024-03-07")
             .sort("-date").fetch_all())

    assert [o["valueQuantity"]["value"] for o in found] == [64, 118]
    assert client.resources("Observation").search(patient=patient.id).count() == 4
    assert client.resources("Patient").search(identifier="urn:mrn|42").get().id == patient.id

    read_back = client.reference("Observation", found[0].id).to_resource()
    read_back["status"] = "amended"
    read_back.save()
    assert read_back["meta"]["versionId"] == "2"
    assert store.read("Observation", found[0].id)["status"] == "amended"
    assert store.outbox_size() == 8  # 7 creates + 1 update

    for resource in found:
        Observation.model_validate(resource.serialize())
    Patient.model_validate(client.reference("Patient", patient.id).to_resource().serialize())


def test_paging_follows_next_links(client: SyncFHIRClient) -> None:
    patient = client.resource("Patient", active=True)
    patient.save()
    for minute in range(7):
        heart_rate(client, patient, 60 + minute, f"2024-03-05T10:{minute:02d}:00Z").save()

    values = [o["valueQuantity"]["value"] for o in client.resources("Observation").search(subject=patient)
              .sort("date").limit(3)]

    assert values == list(range(60, 67))


def test_conditional_create_and_update_from_fhirpy(client: SyncFHIRClient, store: SqliteFhirStore) -> None:
    searchset = client.resources("Patient").search(identifier="urn:mrn|7")
    first, created = searchset.get_or_create(
        client.resource("Patient", identifier=[{"system": "urn:mrn", "value": "7"}])
    )
    again, created_again = searchset.get_or_create(client.resource("Patient"))
    updated, created_by_update = searchset.update(
        client.resource("Patient", identifier=[{"system": "urn:mrn", "value": "7"}], active=False))

    assert (created, created_again, created_by_update) == (True, False, False)
    assert again.id == first.id == updated.id
    assert store.read("Patient", first.id)["active"] is False


def test_errors_reach_fhirpy_as_operation_outcomes(client: SyncFHIRClient) -> None:
    with pytest.raises(OperationOutcomeError, match="unknown search parameter 'colour' for Patient"):
        client.resources("Patient").search(colour="red").fetch()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "missing").to_resource()


def test_responses_validate_as_r4b(base_url: str, client: SyncFHIRClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    client.resource("Patient", active=True).save()

    metadata = requests.get(f"{base_url}/metadata", headers=headers, timeout=30)
    searchset = requests.get(f"{base_url}/Patient?active=true", headers=headers, timeout=30)
    bad = requests.get(f"{base_url}/Patient?colour=red", headers=headers, timeout=30)

    CapabilityStatement.model_validate(metadata.json())
    Bundle.model_validate(searchset.json())
    OperationOutcome.model_validate(bad.json())
    assert searchset.headers["Content-Type"] == "application/fhir+json; charset=utf-8"


def test_the_token_is_required(base_url: str) -> None:
    anonymous = requests.get(f"{base_url}/metadata", timeout=30)
    wrong = requests.get(f"{base_url}/metadata", headers={"Authorization": "Bearer nope"}, timeout=30)
    outside = requests.get(base_url.removesuffix("/fhir") + "/other", headers={"Authorization": f"Bearer {TOKEN}"},
                           timeout=30)

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    OperationOutcome.model_validate(anonymous.json())
    assert outside.status_code == 404
