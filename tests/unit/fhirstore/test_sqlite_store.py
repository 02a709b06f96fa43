"""SqliteFhirStore: CRUD, versions, conditional writes, the outbox, threads and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clock import FixedClock
from fhirstore.errors import (
    InvalidResource,
    InvalidSearch,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    ServerError,
)
from fhirstore.events import CREATED, DELETED, UPDATED, parse_event
from fhirstore.sqlite import SqliteFhirStore

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FixedClock):
    with SqliteFhirStore(tmp_path / "fhir.db", clock=clock) as s:
        yield s


def patient(mrn: str = "123", **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], **extra}


def test_create_assigns_id_version_and_last_updated(store: SqliteFhirStore) -> None:
    result = store.create(patient(id="client-chosen"))

    assert result.outcome == "created" and result.wrote
    assert result.id != "client-chosen" and len(result.id) == 36  # server-assigned uuid4
    assert result.version_id == "1"
    assert result.resource["meta"] == {"versionId": "1", "lastUpdated": "2024-03-05T10:00:00.000Z"}
    assert store.read("Patient", result.id) == result.resource


def test_update_creates_then_versions_and_keeps_client_meta(store: SqliteFhirStore, clock: FixedClock) -> None:
    first = store.update(patient(id="p1", meta={"tag": [{"code": "demo"}], "versionId": "99"}))
    clock.advance(timedelta(minutes=1))
    second = store.update({**first.resource, "active": True})

    assert (first.outcome, first.version_id) == ("created", "1")
    assert (second.outcome, second.version_id) == ("updated", "2")
    assert second.resource["meta"] == {"tag": [{"code": "demo"}], "versionId": "2",
                                       "lastUpdated": "2024-03-05T10:01:00.000Z"}
    assert store.read("Patient", "p1")["active"] is True
    assert "active" not in store.vread("Patient", "p1", "1")


def test_update_with_equal_content_is_unchanged_without_version_or_event(store: SqliteFhirStore) -> None:
    first = store.update(patient(id="p1"))
    events = store.outbox_size()

    again = store.update({**patient(id="p1"), "meta": {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}})

    assert (again.outcome, again.version_id, again.wrote) == ("unchanged", "1", False)
    assert again.resource == first.resource
    assert store.outbox_size() == events
    assert store.history("Patient", "p1")["total"] == 1


def test_if_match_checks_the_current_version(store: SqliteFhirStore) -> None:
    store.update(patient(id="p1"))
    store.update(patient(id="p1", active=True))

    with pytest.raises(PreconditionFailed, match="expects version 1 but the current version is 2"):
        store.update(patient(id="p1", active=False), if_match='W/"1"')
    assert store.update(patient(id="p1", active=False), if_match='W/"2"').version_id == "3"
    with pytest.raises(PreconditionFailed, match="does not exist"):
        store.update(patient(id="nope"), if_match="1")


def test_conditional_create_zero_one_many(store: SqliteFhirStore) -> None:
    made = store.create(patient("a"), if_none_exist="identifier=urn:mrn|a")
    found = store.create(patient("a", active=True), if_none_exist="identifier=urn:mrn|a")

    assert made.outcome == "created"
    assert (found.outcome, found.id, found.wrote) == ("exists", made.id, False)
    assert "active" not in found.resource  # nothing was written
    store.create(patient("b", active=True))
    store.create(patient("c", active=True))
    with pytest.raises(PreconditionFailed, match="more than one"):
        store.create(patient("d"), if_none_exist="active=true")
    assert store.search("Patient", {"identifier": "urn:mrn|d"}).total == 0


def test_conditional_create_with_several_criteria(store: SqliteFhirStore) -> None:
    store.create(patient("a", active=True))

    assert store.create(patient("a"), if_none_exist="identifier=a&active=true").outcome == "exists"
    assert store.create(patient("a"), if_none_exist="identifier=a&active=false").outcome == "created"


def test_conditional_create_rejects_bad_criteria(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidSearch, match="unknown search parameter 'colour' for Patient"):
        store.create(patient(), if_none_exist="colour=blue")
    with pytest.raises(InvalidSearch, match="no search parameters"):
        store.create(patient(), if_none_exist="")
    with pytest.raises(InvalidSearch, match="search parameters only, not _count"):
        store.create(patient(), if_none_exist="identifier=a&_count=1")


def test_read_errors_distinguish_never_existed_from_deleted(store: SqliteFhirStore) -> None:
    store.update(patient(id="p1"))
    deleted = store.delete("Patient", "p1")
    again = store.delete("Patient", "p1")

    assert (deleted.outcome, deleted.version_id) == ("deleted", "2")
    assert (again.outcome, again.version_id) == ("gone", "2")
    assert store.delete("Patient", "never").outcome == "gone"
    with pytest.raises(ResourceGone):
        store.read("Patient", "p1")
    with pytest.raises(ResourceNotFound):
        store.read("Patient", "never")
    with pytest.raises(ResourceGone):
        store.vread("Patient", "p1", "2")
    assert store.vread("Patient", "p1", "1")["id"] == "p1"
    with pytest.raises(ResourceNotFound):
        store.vread("Patient", "p1", "3")
    assert store.search("Patient", {"_id": "p1"}).total == 0


def test_update_after_delete_recreates(store: SqliteFhirStore) -> None:
    store.update(patient(id="p1"))
    store.delete("Patient", "p1")

    back = store.update(patient(id="p1"))

    assert (back.outcome, back.version_id) == ("created", "3")
    assert store.search("Patient", {"identifier": "123"}).total == 1


def test_history_is_newest_first_with_methods_and_etags(store: SqliteFhirStore, clock: FixedClock) -> None:
    made = store.create(patient())
    clock.advance(timedelta(seconds=5))
    store.update({**made.resource, "active": True})
    store.delete("Patient", made.id)

    bundle = store.history("Patient", made.id)

    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [e["request"]["method"] for e in bundle["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["active"] is True
    assert bundle["entry"][1]["response"]["lastModified"] == "2024-03-05T10:00:05.000Z"
    with pytest.raises(ResourceNotFound):
        store.history("Patient", "never")


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (["not", "a", "dict"], "must be a JSON object"),
        ({"id": "x"}, "resourceType is missing"),
        ({"resourceType": "patient"}, "resourceType is missing or invalid"),
        ({"resourceType": "Patient", "id": "has space"}, "is not a FHIR id"),
        ({"resourceType": "Patient", "id": "p", "meta": "v1"}, "meta must be an object"),
        ({"resourceType": "Patient", "id": "p", "x": float("nan")}, "not valid JSON content"),
        ({"resourceType": "Observation", "id": "o", "effectiveDateTime": "2024-03-05T10:00:00"},
         "effectiveDateTime: '2024-03-05T10:00:00' has a time but no UTC offset"),
        ({"resourceType": "Observation", "id": "o", "effectiveDateTime": "yesterday"},
         "effectiveDateTime: 'yesterday' is not a FHIR date"),
    ],
)
def test_invalid_resources_are_rejected_with_the_reason(store: SqliteFhirStore, resource, message) -> None:
    with pytest.raises(InvalidResource, match=message):
        store.update(resource)
    assert store.outbox_size() == 0


def test_update_needs_an_id(store: SqliteFhirStore) -> None:
    with pytest.raises(InvalidResource, match="needs the resource id"):
        store.update(patient())


def test_unknown_resource_types_store_read_and_search_by_identifier(store: SqliteFhirStore) -> None:
    made = store.create({"resourceType": "Basic", "identifier": [{"system": "urn:x", "value": "1"}],
                         "code": {"text": "note"}})

    assert store.read("Basic", made.id)["code"] == {"text": "note"}
    assert [r["id"] for r in store.search("Basic", {"identifier": "urn:x|1"}).resources] == [made.id]
    with pytest.raises(InvalidSearch, match="unknown search parameter 'code' for Basic"):
        store.search("Basic", {"code": "note"})


# ---------------------------------------------------------------- outbox


def events(store: SqliteFhirStore) -> list[dict]:
    return [event for _, event in store.outbox_pending()]


def test_every_changing_write_appends_one_parseable_event(store: SqliteFhirStore) -> None:
    made = store.create(patient(), if_none_exist="identifier=urn:mrn|123")
    store.create(patient(), if_none_exist="identifier=urn:mrn|123")  # exists: no event
    store.update({**made.resource, "active": True})
    store.update({**made.resource, "active": True})  # unchanged: no event
    store.delete("Patient", made.id)
    store.delete("Patient", made.id)  # gone: no event

    parsed = [parse_event(e) for e in events(store)]

    assert [(p.event_type, p.version_id) for p in parsed] == [(CREATED, "1"), (UPDATED, "2"), (DELETED, "3")]
    assert {(p.resource_type, p.resource_id, p.account) for p in parsed} == {("Patient", made.id, "localhost")}
    assert parsed[0].event_time == T0
    first = events(store)[0]
    assert first["subject"] == f"localhost/Patient/{made.id}"
    assert first["topic"].endswith("/workspaces/vigil")
    assert first["data"]["resourceVersionId"] == 1


def test_outbox_pending_is_oldest_first_and_done_removes(store: SqliteFhirStore) -> None:
    for n in range(5):
        store.update(patient(id=f"p{n}"))
    pending = store.outbox_pending(limit=3)

    assert [e["data"]["resourceFhirId"] for _, e in pending] == ["p0", "p1", "p2"]
    store.outbox_done([seq for seq, _ in pending])
    store.outbox_done([seq for seq, _ in pending])  # a retried acknowledgement is harmless

    assert store.outbox_size() == 2
    assert [e["data"]["resourceFhirId"] for _, e in store.outbox_pending()] == ["p3", "p4"]


def test_event_ids_are_stable_per_version(tmp_path: Path, clock: FixedClock) -> None:
    with SqliteFhirStore(tmp_path / "a.db", clock=clock, account="acct.example") as a:
        a.update(patient(id="p1"))
        first = events(a)[0]
        assert events(a)[0]["id"] == first["id"]
        assert first["data"]["resourceFhirAccount"] == "acct.example"


# ---------------------------------------------------------------- threads and processes


def test_concurrent_conditional_creates_make_exactly_one_resource(store: SqliteFhirStore) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        outcomes.append(store.create(patient("same"), if_none_exist="identifier=urn:mrn|same").outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes) == ["created"] + ["exists"] * 7
    assert store.search("Patient", {"identifier": "urn:mrn|same"}).total == 1
    assert store.outbox_size() == 1


def test_concurrent_writers_in_threads_lose_nothing(store: SqliteFhirStore) -> None:
    def worker(n: int) -> None:
        for k in range(25):
            store.update(patient(id=f"t{n}-{k}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert store.search("Patient", {"_summary": "count"}).total == 100
    assert store.outbox_size() == 100


def _run_python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, **kwargs)


def test_another_process_sees_committed_writes_and_writes_back(store: SqliteFhirStore, tmp_path: Path) -> None:
    store.update(patient(id="p1", active=True))
    code = (
        "import json; from fhirstore.sqlite import SqliteFhirStore\n"
        f"s = SqliteFhirStore({str(tmp_path / 'fhir.db')!r})\n"
        "seen = s.read('Patient', 'p1')['active']\n"
        "s.create({'resourceType': 'Patient', 'identifier': [{'system': 'urn:mrn', 'value': 'child'}]})\n"
        "print(json.dumps(seen))\n"
    )
    child = _run_python(code)
    out, _ = child.communicate(timeout=60)

    assert child.returncode == 0 and json.loads(out) is True
    assert store.search("Patient", {"identifier": "urn:mrn|child"}).total == 1
    assert store.outbox_size() == 2


def test_sigkilled_writer_leaves_versions_and_events_consistent(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    code = (
        "import sys; from fhirstore.sqlite import SqliteFhirStore\n"
        f"s = SqliteFhirStore({str(path)!r})\n"
        "n = 0\n"
        "while True:\n"
        "    s.update({'resourceType': 'Patient', 'id': f'k{n % 50}', 'active': n % 2 == 0, 'extension': []})\n"
        "    n += 1\n"
        "    if n == 200: print('ready', flush=True)\n"
    )
    child = _run_python(code)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)

    with SqliteFhirStore(path) as store:
        pending = store.outbox_pending(limit=100_000)
        versions = sum(store.history("Patient", f"k{n}")["total"] for n in range(50))
        assert len(pending) == versions  # every committed version has its event, and only those
        for _, event in pending:
            parsed = parse_event(event)
            store.vread("Patient", parsed.resource_id, parsed.version_id)
        assert store._db().execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = SqliteFhirStore(tmp_path / "closed.db")
    store.update(patient(id="p1"))
    store.close()

    with pytest.raises(ServerError, match="closed"):
        store.read("Patient", "p1")
    with SqliteFhirStore(tmp_path / "closed.db") as reopened:
        assert reopened.read("Patient", "p1")["id"] == "p1"


def test_sqlite_failures_surface_as_server_errors(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    path.write_bytes(b"this is not an SQLite file" * 200)

    with pytest.raises(ServerError, match="cannot open the FHIR store"):
        SqliteFhirStore(path)


@pytest.mark.parametrize(("count", "offset", "ids", "total", "more"), [
    ("3", "0", ["a", "b", "c"], 3, False),  # the page is exactly full: no next page
    ("2", "0", ["a", "b"], 3, True),
    ("2", "2", ["c"], 3, False),
    ("2", "3", [], 3, False),  # past the end
    ("5", "4", [], 3, False),
    ("10", "0", ["a", "b", "c"], 3, False),
])
def test_totals_and_next_pages_at_every_page_boundary(store: SqliteFhirStore, count, offset, ids, total,
                                                      more) -> None:
    for rid in ("a", "b", "c"):
        store.update({"resourceType": "Patient", "id": rid, "active": True})
    store.update({"resourceType": "Patient", "id": "z", "active": False})
    page = store.search("Patient", {"active": "true", "_sort": "_id", "_count": count, "_offset": offset})
    assert ([r["id"] for r in page.resources], page.total, page.next_params is not None) == (ids, total, more)
    assert store.search("Patient", {"active": "true", "_summary": "count"}).total == 3
