"""One contract for the `FhirStore` port (fhirstore/port.py), run on every store Vigil supports:

- `sqlite`: the embedded store;
- `facade`: the HTTP adapter on Vigil's own FHIR facade (the embedded store behind `fhirstore.rest`);
- `medplum`: the HTTP adapter on Medplum's FHIR router (a third-party server, tests/medplum/).

Each test says what Vigil relies on and asserts it the way a caller sees it. Where a server lacks a
feature the test skips with the feature's name; docs/fhir-servers.md lists those skips. The stores
are shared by the whole module: tests keep apart by ids and identifiers of their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.http_store import HttpFhirStore
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from fhirstore.sqlite import SqliteFhirStore
from tests.support.fhir_server import serve_store
from tests.support.medplum import TRANSACTION_SIZE, MedplumServer

LOINC = "http://loinc.org"
SBP, DBP, HR = "8480-6", "8462-4", "8867-4"
BP_PANEL = "85354-9"
ID_SYSTEM = "urn:vigil:test-contract"
STORES = ("sqlite", "facade", "medplum")


@pytest.fixture(scope="module")
def local_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FhirStore]]:
    root: Path = tmp_path_factory.mktemp("contract")
    with SqliteFhirStore(root / "embedded.db") as embedded, SqliteFhirStore(root / "served.db") as served, \
            serve_store(served) as facade_url, HttpFhirStore(facade_url) as facade:
        yield {"sqlite": embedded, "facade": facade}


@pytest.fixture(scope="module")
def medplum_store(medplum: MedplumServer) -> Iterator[FhirStore]:
    with HttpFhirStore(medplum.url, max_transaction_entries=TRANSACTION_SIZE) as store:
        yield store


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> FhirStore:
    # Medplum is asked for only by its own cases: without node the others still run locally.
    if request.param == "medplum":
        return request.getfixturevalue("medplum_store")
    return request.getfixturevalue("local_stores")[request.param]


@pytest.fixture
def pid() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def key() -> str:
    return uuid.uuid4().hex


def observation(patient: str, code: str, value: float, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
        **extra,
    }


def vid(resource: dict[str, Any]) -> str:
    return resource["meta"]["versionId"]


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in resources}


# -- CRUD and versions ------------------------------------------------------------------------


def test_create_read_update_delete(store: FhirStore, pid: str) -> None:
    created = store.create({"resourceType": "Patient", "active": True, "identifier": [
        {"system": ID_SYSTEM, "value": key()}]})
    assert created.outcome == "created" and created.id and created.version_id
    assert store.read("Patient", created.id)["active"] is True

    body = {**store.read("Patient", created.id), "active": False}
    updated = store.update(body)
    assert updated.outcome == "updated" and updated.version_id != created.version_id
    current = store.read("Patient", created.id)
    assert current["active"] is False and vid(current) == updated.version_id

    assert store.delete("Patient", created.id).outcome == "deleted"
    with pytest.raises((ResourceGone, ResourceNotFound)):
        store.read("Patient", created.id)
    with pytest.raises(ResourceNotFound):
        store.read("Patient", f"never-{key()[:20]}")


def test_a_deleted_resource_reads_as_gone(store: FhirStore, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["store"] == "medplum":
        pytest.skip("Medplum router: the in-memory repository forgets a deleted resource (read answers 404, "
                    "not 410 Gone; the Medplum server answers 410)")
    created = store.create({"resourceType": "Basic", "code": {"text": "contract"}})
    store.delete("Basic", created.id)
    with pytest.raises(ResourceGone):
        store.read("Basic", created.id)
    assert store.delete("Basic", created.id).outcome == "gone"


def test_update_creates_at_a_client_id_and_an_equal_update_writes_nothing(store: FhirStore, pid: str) -> None:
    first = store.update({"resourceType": "Patient", "id": pid, "active": True})
    # Counted as created where the server says so; a server with opaque version ids that answers 200
    # to a creating PUT (the Medplum router) is counted as updated (docs/fhir-servers.md).
    assert first.outcome in ("created", "updated") and first.wrote
    again = store.update({"resourceType": "Patient", "id": pid, "active": True})
    assert again.outcome == "unchanged" and not again.wrote
    assert vid(store.read("Patient", pid)) == first.version_id


def test_vread_and_history_newest_first(store: FhirStore, pid: str) -> None:
    v1 = store.update({"resourceType": "Patient", "id": pid, "active": True}).version_id
    v2 = store.update({"resourceType": "Patient", "id": pid, "active": False}).version_id
    assert v1 and v2 and v1 != v2
    assert store.vread("Patient", pid, v1)["active"] is True
    assert store.vread("Patient", pid, v2)["active"] is False
    history = store.history("Patient", pid)
    assert history["type"] == "history"
    versions = [vid(e["resource"]) for e in history["entry"] if e.get("resource")]
    assert versions == [v2, v1]  # handlers/acknowledge.py reads the newest first
    assert [e["response"]["etag"] for e in history["entry"]] == [f'W/"{v2}"', f'W/"{v1}"']


# -- preconditions ----------------------------------------------------------------------------


def test_conditional_create(store: FhirStore) -> None:
    ident = key()
    body = {
        "resourceType": "Basic",
        "code": {"text": "contract"},
        "identifier": [{"system": ID_SYSTEM, "value": ident}],
    }
    query = f"identifier={ID_SYSTEM}|{ident}"
    first = store.create(body, if_none_exist=query)
    assert first.outcome == "created"
    second = store.create(body, if_none_exist=query)
    assert second.outcome == "exists" and second.id == first.id
    assert len(store.search("Basic", {"identifier": f"{ID_SYSTEM}|{ident}"}).resources) == 1

    store.create(body)  # a second match, written unconditionally
    with pytest.raises(PreconditionFailed):
        store.create(body, if_none_exist=query)


def test_if_match(store: FhirStore, pid: str) -> None:
    v1 = store.update({"resourceType": "Patient", "id": pid, "active": True}).version_id
    assert v1
    v2 = store.update({"resourceType": "Patient", "id": pid, "active": False}, if_match=v1).version_id
    with pytest.raises(PreconditionFailed):
        store.update({"resourceType": "Patient", "id": pid, "active": True}, if_match=v1)
    current = store.read("Patient", pid)
    assert current["active"] is False and vid(current) == v2


# -- transactions and batches -----------------------------------------------------------------


def put(resource: dict[str, Any], if_match: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    if if_match:
        request["ifMatch"] = f'W/"{if_match}"'
    return {"resource": resource, "request": request}


def test_transaction_writes_every_entry(store: FhirStore, pid: str) -> None:
    entries = [put({"id": f"{pid}-o{i}", **observation(pid, HR, 60 + i, f"2026-11-20T0{i}:00:00Z")}) for i in range(5)]
    response = store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response["type"] == "transaction-response" and len(response["entry"]) == 5
    assert all(e["response"]["status"].startswith(("200", "201")) for e in response["entry"])
    found = search_all(store, "Observation", {"subject": f"Patient/{pid}"})
    assert ids(found) == {f"{pid}-o{i}" for i in range(5)}


def test_a_failing_transaction_entry_writes_nothing(store: FhirStore, pid: str,
                                                  request: pytest.FixtureRequest) -> None:
    v1 = store.update({"id": f"{pid}-o0", **observation(pid, HR, 60, "2026-11-20T00:00:00Z")}).version_id
    store.update({"id": f"{pid}-o0", **observation(pid, HR, 61, "2026-11-20T00:00:00Z")})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        put({"id": f"{pid}-o1", **observation(pid, HR, 70, "2026-11-20T01:00:00Z")}),
        put({"id": f"{pid}-o0", **observation(pid, HR, 99, "2026-11-20T00:00:00Z")}, if_match=v1),  # stale
    ]}
    with pytest.raises(PreconditionFailed):
        store.transaction(bundle)
    assert store.read("Observation", f"{pid}-o0")["valueQuantity"]["value"] == 61
    if request.node.callspec.params["store"] == "medplum":
        pytest.skip("Medplum router: the in-memory repository does not roll a transaction back (entries "
                    "before the failing one stay written; the Medplum server rolls back)")
    with pytest.raises(ResourceNotFound):
        store.read("Observation", f"{pid}-o1")


def test_a_batch_entry_fails_alone(store: FhirStore, pid: str) -> None:
    v1 = store.update({"id": f"{pid}-o0", **observation(pid, HR, 60, "2026-11-20T00:00:00Z")}).version_id
    store.update({"id": f"{pid}-o0", **observation(pid, HR, 61, "2026-11-20T00:00:00Z")})
    response = store.transaction({"resourceType": "Bundle", "type": "batch", "entry": [
        put({"id": f"{pid}-o1", **observation(pid, HR, 70, "2026-11-20T01:00:00Z")}),
        put({"id": f"{pid}-o0", **observation(pid, HR, 99, "2026-11-20T00:00:00Z")}, if_match=v1),
    ]})
    statuses = [e["response"]["status"].split()[0] for e in response["entry"]]
    assert statuses[0] in ("200", "201") and statuses[1] == "412"
    assert store.read("Observation", f"{pid}-o1")["valueQuantity"]["value"] == 70


def test_a_conditional_transaction_larger_than_a_chunk(store: FhirStore, pid: str) -> None:
    """Ingest's shape: PUTs with If-Match where it merged into a stored version, more entries than
    the Medplum router takes in one conditional transaction (the adapter splits it)."""
    stored = [store.update({"id": f"{pid}-o{i}", **observation(pid, HR, 60, f"2026-11-20T{i:02}:00:00Z")})
              for i in range(12)]
    entries = [put({"id": f"{pid}-o{i}", **observation(pid, HR, 80, f"2026-11-20T{i:02}:00:00Z")},
                   if_match=stored[i].version_id) for i in range(12)]
    entries += [put({"id": f"{pid}-n{i}", **observation(pid, HR, 90, f"2026-11-21T{i:02}:00:00Z")}) for i in range(8)]
    response = store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert len(response["entry"]) == 20
    values = sorted(
        o["valueQuantity"]["value"] for o in search_all(store, "Observation", {"subject": f"Patient/{pid}"})
    )
    assert values == [80] * 12 + [90] * 8


# -- paging -----------------------------------------------------------------------------------


def test_paging_follows_next_links_to_every_match(store: FhirStore, pid: str) -> None:
    store.transaction({"resourceType": "Bundle", "type": "batch", "entry": [
        put({"id": f"{pid}-o{i}", **observation(pid, HR, i, f"2026-11-20T{i:02}:00:00Z")}) for i in range(23)]})
    first = store.search("Observation", {"subject": f"Patient/{pid}", "_count": "10"})
    assert len(first.resources) == 10 and first.next_params is not None
    everything = search_all(store, "Observation", {"subject": f"Patient/{pid}", "_count": "10"})
    assert len(everything) == 23 and ids(everything) == {f"{pid}-o{i}" for i in range(23)}


def test_count_only(store: FhirStore, pid: str) -> None:
    for i in range(3):
        store.update({"id": f"{pid}-o{i}", **observation(pid, HR, i, f"2026-11-20T0{i}:00:00Z")})
    assert store.search("Observation", {"subject": f"Patient/{pid}", "_summary": "count"}).total == 3


# -- the searches Vigil's handlers make ---------------------------------------------------------


@pytest.fixture
def readings(store: FhirStore, pid: str) -> dict[str, Any]:
    """Blood pressure panels and heart rates over three days, as ingest stores them."""
    def bp(i: int, when: str, sbp: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": f"{pid}-bp{i}",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": BP_PANEL}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when,
            "component": [
                {
                    "code": {"coding": [{"system": LOINC, "code": SBP}]},
                    "valueQuantity": {"value": sbp, "unit": "mm[Hg]"},
                },
                {
                    "code": {"coding": [{"system": LOINC, "code": DBP}]},
                    "valueQuantity": {"value": 80, "unit": "mm[Hg]"},
                },
            ],
        }
    days = ["2026-11-18T10:00:00Z", "2026-11-19T10:00:00Z", "2026-11-20T10:00:00Z"]
    for i, day in enumerate(days):
        store.update(bp(i, day, 120 + 10 * i))
        store.update({"id": f"{pid}-hr{i}", **observation(pid, HR, 70 + i, day)})
    return {"pid": pid, "days": days}


def test_readings_by_subject_code_and_date(store: FhirStore, readings: dict[str, Any]) -> None:
    """handlers/patient_data.py: a metric's readings since a time (codes OR-ed)."""
    pid = readings["pid"]
    found = search_all(store, "Observation", {"subject": f"Patient/{pid}", "code": f"{LOINC}|{BP_PANEL},{LOINC}|{SBP}",
                                              "date": "ge2026-11-19T00:00:00+00:00", "_count": "1000"})
    assert ids(found) == {f"{pid}-bp1", f"{pid}-bp2"}


def test_newest_and_first_reading_after(store: FhirStore, readings: dict[str, Any]) -> None:
    """handlers/patient_data.py: the newest reading of a metric; the first one after a time."""
    pid = readings["pid"]
    newest = store.search("Observation", {"subject": f"Patient/{pid}", "code": f"{LOINC}|{HR}", "_sort": "-date",
                                          "_count": "1"})
    assert ids(newest.resources) == {f"{pid}-hr2"}
    first = store.search("Observation", {"subject": f"Patient/{pid}", "code": f"{LOINC}|{HR}",
                                         "date": "gt2026-11-18T12:00:00+00:00", "_sort": "date", "_count": "1"})
    assert ids(first.resources) == {f"{pid}-hr1"}


def test_readings_by_status(store: FhirStore, pid: str) -> None:
    """handlers/reminders.py: a questionnaire's scored total since a time, final or amended."""
    store.update({"id": f"{pid}-a", **observation(pid, HR, 1, "2026-11-20T10:00:00Z")})
    store.update({"id": f"{pid}-b", **observation(pid, HR, 1, "2026-11-20T11:00:00Z", status="preliminary")})
    found = store.search("Observation", {"subject": f"Patient/{pid}", "code": f"{LOINC}|{HR}",
                                         "date": "ge2026-11-20T00:00:00+00:00", "status": "final,amended"})
    assert ids(found.resources) == {f"{pid}-a"}


def test_latest_episode_of_a_rule(store: FhirStore, pid: str) -> None:
    """handlers/alerting.py: a patient's newest DetectedIssue of one rule (by _lastUpdated)."""
    rule = f"urn:vigil:rule-{key()[:8]}"
    for i, code in enumerate(["htn-crisis", "tachycardia", "htn-crisis"]):
        time.sleep(0.003)  # lastUpdated has millisecond precision: one per instant
        store.update({"resourceType": "DetectedIssue", "id": f"{pid}-di{i}", "status": "preliminary",
                      "code": {"coding": [{"system": rule, "code": code}]}, "patient": {"reference": f"Patient/{pid}"}})
    found = store.search("DetectedIssue", {"patient": f"Patient/{pid}", "code": f"{rule}|htn-crisis",
                                           "_sort": "-_lastUpdated", "_count": "1"})
    assert ids(found.resources) == {f"{pid}-di2"}
    open_ = search_all(store, "DetectedIssue", {"patient": f"Patient/{pid}", "status": "preliminary"})
    assert ids(open_) == {f"{pid}-di0", f"{pid}-di1", f"{pid}-di2"}


def test_enrolment_and_goals(store: FhirStore, pid: str) -> None:
    """handlers/patient_data.py and sweeps.py: active CarePlans (of a patient, of everyone), active Goals."""
    store.update({"resourceType": "CarePlan", "id": f"{pid}-cp1", "status": "active", "intent": "plan",
                  "subject": {"reference": f"Patient/{pid}"}})
    store.update({"resourceType": "CarePlan", "id": f"{pid}-cp2", "status": "completed", "intent": "plan",
                  "subject": {"reference": f"Patient/{pid}"}})
    store.update({"resourceType": "Goal", "id": f"{pid}-g1", "lifecycleStatus": "active",
                  "description": {"text": "bp"}, "subject": {"reference": f"Patient/{pid}"}})
    store.update({"resourceType": "Goal", "id": f"{pid}-g2", "lifecycleStatus": "cancelled",
                  "description": {"text": "bp"}, "subject": {"reference": f"Patient/{pid}"}})
    assert ids(search_all(store, "CarePlan", {"subject": f"Patient/{pid}", "status": "active"})) == {f"{pid}-cp1"}
    assert f"{pid}-cp1" in ids(search_all(store, "CarePlan", {"status": "active", "_count": "1000"}))
    assert ids(search_all(store, "Goal", {"subject": f"Patient/{pid}", "lifecycle-status": "active"})) == {f"{pid}-g1"}


def test_tasks_by_identifier_focus_and_status(store: FhirStore, pid: str) -> None:
    """handlers/acknowledge.py (ack code), acs_events.py (focus), sweeps.py (open Tasks)."""
    ack = key()[:8]
    store.update({"resourceType": "Task", "id": f"{pid}-t1", "status": "requested", "intent": "order",
                  "identifier": [{"system": "urn:vigil:ack-code-test", "value": ack}],
                  "focus": {"reference": f"DetectedIssue/{pid}-di"}})
    store.update({"resourceType": "Task", "id": f"{pid}-t2", "status": "accepted", "intent": "order",
                  "focus": {"reference": f"DetectedIssue/{pid}-other"}})
    assert ids(search_all(store, "Task", {"identifier": f"urn:vigil:ack-code-test|{ack}"})) == {f"{pid}-t1"}
    assert ids(search_all(store, "Task", {"focus": f"DetectedIssue/{pid}-di"})) == {f"{pid}-t1"}
    open_ = ids(search_all(store, "Task", {"status": "requested", "_count": "1000"}))
    assert f"{pid}-t1" in open_ and f"{pid}-t2" not in open_


def test_communications_by_identifier_category_and_last_updated(store: FhirStore, pid: str) -> None:
    """notifications/dispatch.py and acs_events.py (provider message id); reminders.py (category,
    _lastUpdated)."""
    msg = key()
    store.update({"resourceType": "Communication", "id": f"{pid}-c1", "status": "completed",
                  "identifier": [{"system": "urn:vigil:provider-message-id-test", "value": msg}],
                  "category": [{"coding": [{"system": "urn:vigil:message-category-test", "code": "reminder"}]}],
                  "subject": {"reference": f"Patient/{pid}"}})
    assert ids(
        store.search("Communication", {"identifier": f"urn:vigil:provider-message-id-test|{msg}"}).resources
    ) == {f"{pid}-c1"}
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    found = search_all(store, "Communication", {"subject": f"Patient/{pid}",
                                                "category": "urn:vigil:message-category-test|reminder",
                                                "_lastUpdated": f"ge{since}", "_count": "1000"})
    assert ids(found) == {f"{pid}-c1"}
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert search_all(store, "Communication", {"subject": f"Patient/{pid}", "_lastUpdated": f"ge{later}"}) == []


def test_questionnaire_responses_by_authored(store: FhirStore, pid: str) -> None:
    """handlers/reminders.py: a patient's responses authored since a time."""
    for i, day in enumerate(["2026-11-18T10:00:00Z", "2026-11-20T10:00:00Z"]):
        store.update({"resourceType": "QuestionnaireResponse", "id": f"{pid}-qr{i}", "status": "completed",
                      "authored": day, "subject": {"reference": f"Patient/{pid}"}})
    found = search_all(store, "QuestionnaireResponse", {"subject": f"Patient/{pid}",
                                                        "authored": "ge2026-11-19T00:00:00+00:00", "_count": "100"})
    assert ids(found) == {f"{pid}-qr1"}


def test_questionnaire_by_url_and_version(store: FhirStore) -> None:
    """handlers/fhir_events.py: the Questionnaire a response answers (canonical url|version)."""
    url = f"urn:vigil:questionnaire:{key()[:8]}"
    for version in ("1", "2"):
        store.update({"resourceType": "Questionnaire", "id": f"q-{url[-8:]}-{version}", "status": "active",
                      "url": url, "version": version})
    assert {q["version"] for q in store.search("Questionnaire", {"url": url}).resources} == {"1", "2"}
    assert [q["version"] for q in store.search("Questionnaire", {"url": url, "version": "2"}).resources] == ["2"]


def test_contacts_by_telecom_care_team_and_role(store: FhirStore, pid: str) -> None:
    """notifications/consent.py (a patient by phone), preferences.py (active care team, on-call roles)."""
    phone = f"+1555{uuid.uuid4().int % 10**7:07d}"
    store.update({"resourceType": "Patient", "id": pid, "telecom": [{"system": "sms", "value": phone}]})
    assert ids(store.search("Patient", {"telecom": phone}).resources) == {pid}
    store.update({"resourceType": "CareTeam", "id": f"{pid}-team", "status": "active",
                  "subject": {"reference": f"Patient/{pid}"}})
    assert ids(store.search("CareTeam", {"patient": f"Patient/{pid}", "status": "active"}).resources) == {f"{pid}-team"}
    role = f"urn:vigil:role-test|{key()[:8]}"
    system, _, code = role.partition("|")
    store.update({"resourceType": "PractitionerRole", "id": f"{pid}-role", "active": True,
                  "code": [{"coding": [{"system": system, "code": code}]}]})
    assert ids(store.search("PractitionerRole", {"role": role, "active": "true"}).resources) == {f"{pid}-role"}


def test_basic_by_identifier(store: FhirStore) -> None:
    """notifications/channels/ledger.py and ack_lockout.py keep their records as Basic resources."""
    ident = key()
    store.update({"resourceType": "Basic", "id": f"b-{ident[:20]}", "code": {"text": "ledger"},
                  "identifier": [{"system": "urn:vigil:ledger-test", "value": ident}]})
    assert ids(store.search("Basic", {"identifier": f"urn:vigil:ledger-test|{ident}"}).resources) == {f"b-{ident[:20]}"}


def test_changes_by_last_updated_oldest_first(store: FhirStore, pid: str) -> None:
    """fhirstore/polling_source.py: a window of `_lastUpdated`, sorted by it."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(3):
        time.sleep(0.003)  # lastUpdated has millisecond precision: one per instant
        store.update({"id": f"{pid}-o{i}", **observation(pid, HR, i, "2026-11-20T10:00:00Z")})
    end = datetime.now(UTC) + timedelta(seconds=1)
    found = store.search("Observation", {"_lastUpdated": [f"ge{start.isoformat()}", f"le{end.isoformat()}"],
                                         "_sort": "_lastUpdated", "_count": "100"}).resources
    mine = [r["id"] for r in found if r["id"].startswith(pid)]
    assert mine == [f"{pid}-o{i}" for i in range(3)]
    stamps = [r["meta"]["lastUpdated"] for r in found]
    assert stamps == sorted(stamps, key=lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")))


def test_escalation_due_is_searched_only_where_the_store_says_it_is_supported(
        store: FhirStore, request: pytest.FixtureRequest, pid: str) -> None:
    """The escalation sweep relies on Vigil's `escalation-due` Task parameter or its fallback (every
    open Task). Medplum answers a search by a parameter it does not know with an empty Bundle, so
    the sweep must learn from the CapabilityStatement that it is not supported."""
    from handlers.sweeps import due_search_support

    store.update({"resourceType": "Task", "id": f"{pid}-due", "status": "requested", "intent": "order"})
    support = due_search_support(store)
    if request.node.callspec.params["store"] == "medplum":
        assert not support.supported and "not listed" in support.detail
        # The silent zero the fallback exists for:
        assert store.search("Task", {"escalation-due": "le2100-01-01T00:00:00Z", "status": "requested"}).resources == []
    else:
        assert support.supported


# -- reads together (the write path's and enrollment's round-trip savings) ------------------------


def test_reads_together_answer_as_separate_reads(store: FhirStore, pid: str) -> None:
    """One `batch` Bundle of GETs on the HTTP adapter (fhirstore/batch_reads.py): a read, a read of
    nothing, and a search come back as the separate interactions would answer them."""
    from fhirstore.batch_reads import Read, read_together

    store.update({"resourceType": "Patient", "id": pid, "active": True})
    made = store.create(observation(pid, HR, 61, "2026-11-20T08:00:00Z"))
    reads = [Read("Patient", pid), Read("Patient", f"{pid}-nobody"),
             Read("Observation", params={"subject": f"Patient/{pid}", "code": f"{LOINC}|{HR}"})]
    found, missing, matches = read_together(store, reads)
    assert isinstance(found, dict) and found["id"] == pid and found["active"] is True
    assert missing is None
    assert isinstance(matches, list) and [m["id"] for m in matches] == [made.id]


def test_many_by_id_leaves_out_the_missing_and_the_deleted(store: FhirStore, pid: str) -> None:
    """A batch's stored Observations in one `_id` search (`_id=a,b,c`, FHIR R4 search.html#token)."""
    from fhirstore.batch_reads import read_many

    wanted = [f"{pid}-o{i}" for i in range(4)]
    for i, oid in enumerate(wanted[:3]):
        store.update({"id": oid, **observation(pid, HR, 60 + i, f"2026-11-20T0{i}:00:00Z")})
    store.delete("Observation", wanted[2])
    found = read_many(store, "Observation", wanted)
    assert sorted(found) == wanted[:2]
    assert found[wanted[1]]["valueQuantity"]["value"] == 61


def test_identifiers_of_several_devices_in_one_search(store: FhirStore, pid: str) -> None:
    """`identifier=sys|a,sys|b` is an OR (FHIR R4 search.html#combining): a batch's Devices in one search."""
    serials = [f"{pid}-dev{i}" for i in range(3)]
    for serial in serials[:2]:
        store.create({"resourceType": "Device", "identifier": [{"system": ID_SYSTEM, "value": serial}],
                      "patient": {"reference": f"Patient/{pid}"}})
    token = ",".join(f"{ID_SYSTEM}|{s}" for s in serials)
    devices = search_all(store, "Device", {"identifier": token, "_count": "10"})
    assert sorted(i["value"] for d in devices for i in d["identifier"]) == serials[:2]
