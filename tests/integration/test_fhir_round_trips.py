"""Round trips on the HTTP adapter, counted at a real FHIR server on loopback: what is read
together (batch Bundles, `_id` and identifier searches, known versions) answers exactly what the
separate reads would, and a change by another writer is seen at the next read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhirstore import rest
from fhirstore.batch_reads import Read, read_many, read_together
from fhirstore.http_store import HttpFhirStore
from fhirstore.sqlite import SqliteFhirStore
from handlers.enrollment_cache import EnrollmentCache
from handlers.ingest import RawMessage, handle_device_messages
from handlers.patient_data import load_enrollment, load_patient_rules
from ingest.identity import LOOKUP, IdentityResolver
from ingest.templates import MeasurementGroup
from ingest.templates.errors import AMBIGUOUS_IDENTIFIER, MappingFailure
from runtime.bootstrap import bootstrap
from runtime.cohort import careplan, device
from runtime.settings import Settings
from tests.support.fhir_server import serve_store
from tests.support.pipeline import reading


class Requests:
    """FHIR requests as the server saw them: `METHOD first-path-segment`."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def reset(self) -> None:
        self.seen.clear()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SqliteFhirStore, str, Requests]]:
    requests = Requests()
    original = rest.handle

    def counting(store: Any, method: str, path: str, *args: Any) -> Any:
        requests.seen[f"{method} {path.strip('/').split('/')[0] or '(base)'}"] += 1
        return original(store, method, path, *args)

    monkeypatch.setattr(rest, "handle", counting)
    with SqliteFhirStore(tmp_path / "server.db") as backing, serve_store(backing) as base:
        yield backing, base, requests


def patient(store: Any, pid: str) -> None:
    store.update({"resourceType": "Patient", "id": pid, "active": True,
                  "telecom": [{"system": "sms", "value": "+15550100001"}]})


def goal(pid: str, gid: str, systolic_max: int) -> dict[str, Any]:
    return {"resourceType": "Goal", "id": gid, "lifecycleStatus": "active", "subject": {"reference": f"Patient/{pid}"},
            "description": {"text": "blood pressure"},
            "target": [{"measure": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                        "detailRange": {"high": {"value": systolic_max, "unit": "mm[Hg]"}}}]}


def test_reads_together_are_one_request_with_the_answers_of_separate_reads(server) -> None:
    backing, base, requests = server
    patient(backing, "p1")
    backing.update(careplan("p1", "hypertension"))
    backing.update(goal("p1", "g1", 150))
    reads = [Read("CarePlan", params={"subject": "Patient/p1", "status": "active"}),
             Read("Patient", "p1"), Read("Patient", "nobody"),
             Read("Goal", params={"subject": "Patient/p1", "lifecycle-status": "active"})]
    with HttpFhirStore(base) as http:
        requests.reset()
        together = read_together(http, reads)
        assert requests.seen == {"POST (base)": 1}
        separate = read_together(backing, reads)  # the embedded store answers each on its own
    assert together == separate
    careplans, found, missing, goals = together
    assert [c["id"] for c in careplans] == [careplan("p1", "hypertension")["id"]]  # type: ignore[index, union-attr]
    assert found["id"] == "p1" and missing is None  # type: ignore[index]
    assert [g["id"] for g in goals] == ["g1"]  # type: ignore[index, union-attr]


def test_a_search_longer_than_a_batch_entry_holds_is_read_in_full(server) -> None:
    backing, base, requests = server
    patient(backing, "p2")
    for i in range(130):  # the embedded server's page is 100: the entry holds 100 of 130
        backing.update(goal("p2", f"g{i}", 150))
    with HttpFhirStore(base) as http:
        goals, _ = read_together(http, [Read("Goal", params={"subject": "Patient/p2"}), Read("Patient", "p2")])
    assert sorted(g["id"] for g in goals) == sorted(f"g{i}" for i in range(130))  # type: ignore[union-attr]


def test_many_by_id_is_one_search_and_leaves_out_the_missing_and_deleted(server) -> None:
    backing, base, requests = server
    for i in range(5):
        patient(backing, f"m{i}")
    backing.delete("Patient", "m4")
    with HttpFhirStore(base) as http:
        requests.reset()
        found = read_many(http, "Patient", [f"m{i}" for i in range(6)])
        assert requests.seen == {"GET Patient": 1}
    assert sorted(found) == ["m0", "m1", "m2", "m3"]


def test_a_version_the_adapter_wrote_is_read_back_without_a_request_and_as_a_copy(server) -> None:
    backing, base, requests = server
    with HttpFhirStore(base) as http:
        written = http.update({"resourceType": "Patient", "id": "v1", "active": True}).resource
        assert written is not None
        requests.reset()
        first = http.vread("Patient", "v1", written["meta"]["versionId"])
        assert requests.total == 0 and first == written
        first["active"] = False  # the caller's copy: the next answer is the stored version still
        assert http.vread("Patient", "v1", written["meta"]["versionId"])["active"] is True
        backing.update({"resourceType": "Patient", "id": "v1", "active": False})  # another writer
        assert http.read("Patient", "v1")["active"] is False  # the current version is always asked for
        assert http.vread("Patient", "v1", "2")["active"] is False
        assert requests.seen == {"GET Patient": 1}  # the read brought version 2 along


def test_a_batch_of_devices_is_one_search_and_ambiguity_is_still_refused(server) -> None:
    backing, base, requests = server
    for i in range(4):
        patient(backing, f"d{i}")
        backing.update(device(f"d{i}-dev", f"d{i}"))
    backing.update({**device("twin-a", "d0"), "identifier": [{"value": "twin"}]})
    backing.update({**device("twin-b", "d1"), "identifier": [{"value": "twin"}]})
    with HttpFhirStore(base) as http:
        resolver = IdentityResolver(http, LOOKUP)
        names = [f"d{i}-dev" for i in range(4)] + ["twin", "unknown"]
        requests.reset()
        batch = resolver.for_batch(names)
        resolved = [batch.resolve(MeasurementGroup(f"d{i}-dev", "heart_rate", None, None, None)) for i in range(4)]
        with pytest.raises(MappingFailure) as ambiguous:
            batch.resolve(MeasurementGroup("twin", "heart_rate", None, None, None))
        with pytest.raises(MappingFailure):
            batch.resolve(MeasurementGroup("unknown", "heart_rate", None, None, None))
        assert requests.seen == {"GET Device": 1}
    assert [(r.device_id, r.patient_id) for r in resolved] == [(f"d{i}-dev", f"d{i}") for i in range(4)]
    assert ambiguous.value.reason == AMBIGUOUS_IDENTIFIER


def test_a_device_relinked_between_batches_writes_to_its_new_patient(server) -> None:
    backing, base, _ = server
    for pid in ("r1", "r2", "other"):
        patient(backing, pid)
    backing.update(device("r1-dev", "r1"))
    backing.update(device("other-dev", "other"))
    with HttpFhirStore(base) as http:
        resolver = IdentityResolver(http, LOOKUP)
        first = resolver.for_batch(["r1-dev", "other-dev"]).resolve(MeasurementGroup("r1-dev", "x", None, None, None))
        backing.update(device("r1-dev", "r2"))
        again = resolver.for_batch(["r1-dev", "other-dev"]).resolve(MeasurementGroup("r1-dev", "x", None, None, None))
    assert (first.patient_id, again.patient_id) == ("r1", "r2")


def test_no_enrollment_or_goal_on_the_http_adapter_is_older_than_its_last_update(server) -> None:
    backing, base, _ = server
    patient(backing, "e1")
    backing.update(careplan("e1", "hypertension"))
    backing.update(goal("e1", "ge1", 150))
    services = bootstrap(Settings.from_env({}, data_dir=Path(backing._path).parent / "vigil", fhir_url=base,
                                           event_source="eventgrid"))
    try:
        cache = EnrollmentCache()
        now = datetime.now(UTC)
        load_patient_rules(services.store, "Patient/e1", services.rulesets, now, cache=cache)
        backing.update(goal("e1", "ge1", 135))  # another instance's write: this one gets no event for it
        fresh = load_enrollment(services.store, "Patient/e1")
        cached = cache.get(services.store, "Patient/e1", lambda: load_enrollment(services.store, "Patient/e1"))
        for seen in (fresh, cached):
            assert seen.goals[0]["target"][0]["detailRange"]["high"]["value"] == 135
    finally:
        services.close()


def test_ingest_on_the_http_adapter_reads_a_batch_in_two_requests_and_writes_it_in_one(server, tmp_path: Path) -> None:
    backing, base, requests = server
    for i in range(10):
        patient(backing, f"i{i}")
        backing.update(device(f"i{i}-dev", f"i{i}"))
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "vigil", fhir_url=base, event_source="eventgrid"))
    try:
        from runtime.bootstrap import ingest_deps

        deps = ingest_deps(services)
        msgs = [RawMessage(body=reading(f"i{i}", "heart_rate", f"2026-10-01T08:{i:02d}:00Z", {"bpm": 70 + i}))
                for i in range(10)]
        requests.reset()
        report = handle_device_messages(msgs, deps)
        assert report.written == 10 and report.created == 10
        assert requests.seen == {"GET Device": 1, "GET Observation": 1, "POST (base)": 1}
        requests.reset()
        again = handle_device_messages(msgs, deps)  # a re-delivery: read, nothing to write
        assert again.written == 10 and again.created == 0 and again.unchanged == 10
        assert requests.seen == {"GET Device": 1, "GET Observation": 1}
    finally:
        services.close()
