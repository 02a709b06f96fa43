"""SqliteFhirStore transaction and batch Bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.clock import FixedClock
from fhirstore.errors import InvalidResource, PreconditionFailed, ResourceNotFound
from fhirstore.sqlite import SqliteFhirStore

PATIENT_URN = "urn:uuid:7d1b3a3e-8a4c-4f7e-9a51-4f1f0f7e2c11"


@pytest.fixture
def store(tmp_path: Path):
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(datetime(2024, 3, 5, tzinfo=UTC))) as s:
        yield s


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict, full_url: str | None = None, if_none_exist: str | None = None) -> dict:
    request = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    entry = {"resource": resource, "request": request}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def put(resource: dict, url: str, if_match: str | None = None) -> dict:
    request = {"method": "PUT", "url": url, **({"ifMatch": if_match} if if_match else {})}
    return {"resource": resource, "request": request}


def patient(mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}


def obs(subject: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": subject}, "hasMember": [{"reference": subject}]}


def statuses(response: dict) -> list[str]:
    return [e["response"]["status"] for e in response["entry"]]


def test_transaction_resolves_urn_uuid_references_of_created_entries(store: SqliteFhirStore) -> None:
    response = store.transaction(bundle(
        "transaction",
        post(obs(PATIENT_URN)),  # refers to an entry that comes later in the Bundle
        post(patient("1"), full_url=PATIENT_URN),
    ))

    assert response["type"] == "transaction-response"
    assert statuses(response) == ["201 Created", "201 Created"]
    patient_id = response["entry"][1]["resource"]["id"]
    observation = store.read("Observation", response["entry"][0]["resource"]["id"])
    assert observation["subject"] == {"reference": f"Patient/{patient_id}"}
    assert observation["hasMember"] == [{"reference": f"Patient/{patient_id}"}]
    assert response["entry"][1]["response"]["location"] == f"Patient/{patient_id}/_history/1"
    assert response["entry"][1]["response"]["etag"] == 'W/"1"'
    assert store.search("Observation", {"patient": patient_id}).total == 1


def test_transaction_if_none_exist_match_is_reused_for_references(store: SqliteFhirStore) -> None:
    existing = store.create(patient("1"))
    events_before = store.outbox_size()

    response = store.transaction(bundle(
        "transaction",
        post(patient("1"), full_url=PATIENT_URN, if_none_exist="identifier=urn:mrn|1"),
        post(obs(PATIENT_URN)),
    ))

    assert statuses(response) == ["200 OK", "201 Created"]
    assert response["entry"][0]["resource"]["id"] == existing.id
    assert store.read("Observation", response["entry"][1]["resource"]["id"])["subject"]["reference"] == \
        f"Patient/{existing.id}"
    assert store.outbox_size() == events_before + 1


def test_transaction_is_all_or_nothing(store: SqliteFhirStore) -> None:
    store.update({**patient("0"), "id": "p0"})
    events_before = store.outbox_size()

    with pytest.raises(PreconditionFailed, match=r"transaction entry 2 \(PUT Patient/p0\) failed: .*version 5"):
        store.transaction(bundle(
            "transaction",
            post(patient("1")),
            {"request": {"method": "DELETE", "url": "Patient/p0"}},
            put({**patient("0"), "id": "p0", "active": True}, "Patient/p0", if_match='W/"5"'),
        ))

    assert store.search("Patient", {"identifier": "urn:mrn|1"}).total == 0
    assert store.read("Patient", "p0")["meta"]["versionId"] == "1"
    assert store.outbox_size() == events_before


def test_transaction_with_a_malformed_entry_writes_nothing(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidResource, match=r"Bundle.entry\[1\].request.method must be GET, POST, PUT or DELETE"):
        store.transaction(bundle("transaction", post(patient("1")),
                                 {"resource": patient("2"), "request": {"method": "PATCH", "url": "Patient/x"}}))
    assert store.search("Patient").total == 0 and store.outbox_size() == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"request": {"method": "POST", "url": "Patient"}}, r"entry\[0\].resource is missing"),
        ({"resource": patient("1")}, r"entry\[0\].request is missing"),
        (post(patient("1")) | {"request": {"method": "POST", "url": "Observation"}}, "the url says Observation"),
        (put({**patient("1"), "id": "a"}, "Patient/b"), "differs from the url id 'b'"),
        ({"request": {"method": "DELETE", "url": "Patient"}}, "needs an id or search criteria"),
        ({"request": {"method": "GET", "url": "Patient/1/$everything"}}, "unsupported request"),
    ],
)
def test_malformed_entries_are_named(store: SqliteFhirStore, entry, message) -> None:
    with pytest.raises(InvalidResource, match=message):
        store.transaction(bundle("transaction", entry))


def test_not_a_transaction_or_batch(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidResource, match="Bundle.type must be transaction or batch, not 'collection'"):
        store.transaction(bundle("collection"))
    with pytest.raises(InvalidResource, match="expected a Bundle"):
        store.transaction(patient("1"))


def test_conditional_put_creates_updates_or_refuses(store: SqliteFhirStore) -> None:
    url = "Patient?identifier=urn:mrn|1"
    first = store.transaction(bundle("transaction", put(patient("1"), url)))
    made_id = first["entry"][0]["resource"]["id"]
    second = store.transaction(bundle("transaction", put({**patient("1"), "active": True}, url)))
    store.create(patient("2"))
    store.create(patient("2"))

    assert statuses(first) == ["201 Created"]
    assert statuses(second) == ["200 OK"]
    assert second["entry"][0]["resource"]["id"] == made_id
    assert second["entry"][0]["resource"]["meta"]["versionId"] == "2"
    with pytest.raises(PreconditionFailed, match="match more than one resource"):
        store.transaction(bundle("transaction", put(patient("2"), "Patient?identifier=urn:mrn|2")))
    with pytest.raises(InvalidResource, match="has id 'other'"):
        store.transaction(bundle("transaction", put({**patient("1"), "id": "other"}, url)))


def test_conditional_and_plain_deletes(store: SqliteFhirStore) -> None:
    store.update({**patient("1"), "id": "p1"})
    store.update({**patient("2"), "id": "p2"})

    response = store.transaction(bundle(
        "transaction",
        {"request": {"method": "DELETE", "url": "Patient/p1"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|2"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|none"}},
    ))

    assert statuses(response) == ["204 No Content"] * 3
    assert store.search("Patient").total == 0
    assert store.outbox_size() == 4


def test_unchanged_put_in_a_transaction_emits_nothing(store: SqliteFhirStore) -> None:
    store.update({**patient("1"), "id": "p1"})
    response = store.transaction(bundle("transaction", put({**patient("1"), "id": "p1"}, "Patient/p1")))

    assert statuses(response) == ["200 OK"]
    assert response["entry"][0]["resource"]["meta"]["versionId"] == "1"
    assert store.outbox_size() == 1


def test_get_entries_read_search_and_history(store: SqliteFhirStore) -> None:
    store.update({**patient("1"), "id": "p1"})
    store.update({**patient("1"), "id": "p1", "active": True})

    response = store.transaction(bundle(
        "transaction",
        {"request": {"method": "GET", "url": "Patient/p1"}},
        {"request": {"method": "GET", "url": "Patient/p1/_history/1"}},
        {"request": {"method": "GET", "url": "Patient/p1/_history"}},
        {"request": {"method": "GET", "url": "Patient?active=true"}},
        post(patient("2")),
    ))

    read, vread, history, search, created = response["entry"]
    assert read["resource"]["active"] is True and read["response"]["etag"] == 'W/"2"'
    assert "active" not in vread["resource"]
    assert history["resource"]["total"] == 2
    assert search["resource"]["type"] == "searchset" and search["resource"]["total"] == 1
    assert created["response"]["status"] == "201 Created"
    with pytest.raises(ResourceNotFound, match=r"entry 0 \(GET Patient/zz\)"):
        store.transaction(bundle("transaction", {"request": {"method": "GET", "url": "Patient/zz"}}))


def test_batch_reports_each_failure_and_keeps_the_rest(store: SqliteFhirStore) -> None:
    store.update({**patient("0"), "id": "p0"})

    response = store.transaction(bundle(
        "batch",
        post(patient("1")),
        put({**patient("0"), "id": "p0", "active": True}, "Patient/p0", if_match='W/"9"'),
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "PATCH", "url": "Patient/p0"}},
        {"request": {"method": "GET", "url": "Patient?colour=red"}},
        post(patient("1"), if_none_exist="identifier=urn:mrn|1"),
    ))

    assert response["type"] == "batch-response"
    assert statuses(response) == ["201 Created", "412 Precondition Failed", "404 Not Found",
                                  "400 Bad Request", "400 Bad Request", "200 OK"]
    outcome = response["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome" and "version 9" in outcome["issue"][0]["diagnostics"]
    assert "colour" in response["entry"][4]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert store.search("Patient", {"identifier": "urn:mrn|1"}).total == 1
    assert "active" not in store.read("Patient", "p0")


def test_transaction_writes_one_event_per_change(store: SqliteFhirStore) -> None:
    store.transaction(bundle("transaction", *[post(patient(str(n))) for n in range(5)]))

    pending = store.outbox_pending()
    assert len(pending) == 5
    assert {e["eventType"] for _, e in pending} == {"Microsoft.HealthcareApis.FhirResourceCreated"}
