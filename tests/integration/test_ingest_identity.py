"""Identity resolution and idempotent Observation writes against the real embedded SQLite store."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.sqlite import SqliteFhirStore
from ingest.identity import CREATE, LOOKUP, LOOKUP_WITH_ENCOUNTER, IdentityResolver
from ingest.templates import MeasurementGroup, group_measurements
from ingest.templates.errors import MappingFailure
from ingest.templates.presets import load_preset


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteFhirStore(tmp_path / "fhir.sqlite")
    yield s
    s.close()


def group(device: str = "cuff-1", patient: str | None = None, encounter: str | None = None) -> MeasurementGroup:
    return MeasurementGroup(device_id=device, type="heart_rate", patient_id=patient, encounter_id=encounter,
                            correlation_id=None)


def add_patient(store, id_: str, identifier: str) -> None:
    store.update({"resourceType": "Patient", "id": id_, "identifier": [{"system": "urn:mrn", "value": identifier}]})


def add_device(store, id_: str, identifier: str, patient_id: str | None, system: str | None = None) -> None:
    device = {"resourceType": "Device", "id": id_,
              "identifier": [{"system": system, "value": identifier} if system else {"value": identifier}]}
    if patient_id:
        device["patient"] = {"reference": f"Patient/{patient_id}"}
    store.update(device)


def failure(fn) -> MappingFailure:
    with pytest.raises(MappingFailure) as info:
        fn()
    return info.value


def count(store, resource_type: str) -> int:
    return store.search(resource_type, {"_summary": "count"}).total or 0


# --- Lookup -------------------------------------------------------------------------------------


def test_lookup_resolves_device_and_its_patient(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    ids = IdentityResolver(store, LOOKUP).resolve(group())
    assert (ids.device_id, ids.patient_id, ids.encounter_id) == ("dev-a", "pat-a", None)


def test_lookup_unknown_device_or_unlinked_device(store) -> None:
    resolver = IdentityResolver(store, "lookup")
    assert failure(lambda: resolver.resolve(group())).reason == "unknown_device"
    add_device(store, "dev-a", "cuff-1", None)
    error = failure(lambda: resolver.resolve(group()))
    assert error.reason == "unknown_device" and "not linked to a Patient" in error.detail
    assert count(store, "Patient") == 0  # Lookup never creates anything


def test_a_device_moved_to_another_patient_is_picked_up_at_once(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_patient(store, "pat-b", "MRN-2")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    resolver = IdentityResolver(store, LOOKUP)
    assert resolver.resolve(group()).patient_id == "pat-a"
    add_device(store, "dev-a", "cuff-1", "pat-b")  # handed to another patient
    assert resolver.resolve(group()).patient_id == "pat-b"  # no stale cache


def test_lookup_with_a_patient_in_the_message_checks_the_link(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_patient(store, "pat-b", "MRN-2")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    resolver = IdentityResolver(store, LOOKUP)
    assert resolver.resolve(group(patient="MRN-1")).patient_id == "pat-a"
    assert resolver.resolve(group(patient="pat-a")).patient_id == "pat-a"  # the FHIR id works too
    error = failure(lambda: resolver.resolve(group(patient="MRN-2")))
    assert error.reason == "device_patient_mismatch"
    assert "MRN-2" not in error.detail  # identifiers are not repeated in details


def test_device_identifier_system(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", "pat-a", system="urn:vendor:serial")
    assert (
        IdentityResolver(store, LOOKUP, device_identifier_system="urn:vendor:serial").resolve(group()).device_id
        == "dev-a"
    )
    error = failure(lambda: IdentityResolver(store, LOOKUP, device_identifier_system="urn:other").resolve(group()))
    assert error.reason == "unknown_device"


def test_identifiers_with_search_special_characters(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff,1|x$y", "pat-a")
    assert IdentityResolver(store, LOOKUP).resolve(group(device="cuff,1|x$y")).device_id == "dev-a"


def test_two_devices_with_the_same_identifier_are_ambiguous(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    add_device(store, "dev-b", "cuff-1", "pat-a")
    assert failure(lambda: IdentityResolver(store, LOOKUP).resolve(group())).reason == "ambiguous_identifier"


def test_lookup_with_encounter(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    resolver = IdentityResolver(store, LOOKUP_WITH_ENCOUNTER)
    assert failure(lambda: resolver.resolve(group())).reason == "identity_not_defined"
    assert failure(lambda: resolver.resolve(group(encounter="ENC-9"))).reason == "unknown_encounter"
    store.update({"resourceType": "Encounter", "id": "enc-9", "status": "in-progress",
                  "class": {"code": "VR"}, "identifier": [{"value": "ENC-9"}]})
    assert resolver.resolve(group(encounter="ENC-9")).encounter_id == "enc-9"


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown identity mode"):
        IdentityResolver(None, "Guess")  # type: ignore[arg-type]


# --- Create -------------------------------------------------------------------------------------


def sha(value: str, system: str | None = None) -> str:
    return hashlib.sha256(f"{system or ''}_{value}".encode()).hexdigest()


def test_create_makes_shell_patient_and_device_with_medtech_ids(store) -> None:
    resolver = IdentityResolver(store, CREATE)
    ids = resolver.resolve(group(patient="MRN-7"))
    assert (ids.patient_id, ids.device_id) == (sha("MRN-7"), sha("cuff-1"))
    device = store.read("Device", ids.device_id)
    assert device["patient"] == {"reference": f"Patient/{ids.patient_id}"}
    assert store.read("Patient", ids.patient_id)["identifier"] == [{"value": "MRN-7"}]
    assert resolver.resolve(group(patient="MRN-7")) == ids
    assert (count(store, "Patient"), count(store, "Device")) == (1, 1)


def test_create_needs_a_patient_identifier(store) -> None:
    assert failure(lambda: IdentityResolver(store, CREATE).resolve(group())).reason == "identity_not_defined"


def test_create_reuses_an_existing_patient_and_links_an_unlinked_device(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", None)
    ids = IdentityResolver(store, CREATE).resolve(group(patient="MRN-1"))
    assert (ids.patient_id, ids.device_id) == ("pat-a", "dev-a")
    assert store.read("Device", "dev-a")["patient"] == {"reference": "Patient/pat-a"}


def test_create_refuses_a_device_linked_to_another_patient(store) -> None:
    add_patient(store, "pat-a", "MRN-1")
    add_device(store, "dev-a", "cuff-1", "pat-a")
    error = failure(lambda: IdentityResolver(store, CREATE).resolve(group(patient="MRN-2")))
    assert error.reason == "device_patient_mismatch"
    assert count(store, "Patient") == 2  # the named patient exists now, the Device was left alone
    assert store.read("Device", "dev-a")["patient"] == {"reference": "Patient/pat-a"}


def test_create_under_concurrency_makes_one_patient_and_one_device(tmp_path: Path) -> None:
    path = tmp_path / "fhir.sqlite"
    SqliteFhirStore(path).close()
    threads, results, errors = 8, [], []
    barrier = threading.Barrier(threads)

    def worker() -> None:
        store = SqliteFhirStore(path)  # separate store objects, as separate workers would have
        try:
            barrier.wait()
            results.append(IdentityResolver(store, CREATE).resolve(group(patient="MRN-42")))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            store.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors
    assert len(results) == threads and len(set(results)) == 1
    with SqliteFhirStore(path) as store:
        assert (count(store, "Patient"), count(store, "Device")) == (1, 1)


# --- the whole path: normalize, resolve, write; replay ------------------------------------------


def read_or_none(store, resource_type: str, id_: str):
    try:
        return store.read(resource_type, id_)
    except (ResourceNotFound, ResourceGone):
        return None


def ingest(store, messages, mode=CREATE) -> list[str]:
    devices, fhir = load_preset("vigil-generic")
    resolver = IdentityResolver(store, mode)
    actions = []
    for message in messages:
        result = devices.normalize(message)
        assert result.ok, result.detail
        for g in group_measurements(result.measurements):
            ids = resolver.resolve(g)
            for change in fhir.observations(g, patient_id=ids.patient_id, device_id=ids.device_id,
                                            existing=lambda i: read_or_none(store, "Observation", i)):
                actions.append(change.action)
                if change.action != "noop":
                    store.update(change.resource)
    return actions


BATCH = [
    {"deviceId": "cuff-1", "patientId": "MRN-9", "type": "blood_pressure", "time": "2024-05-01T07:30:00-05:00",
     "values": {"systolic": 150, "diastolic": 95, "pulse": 80}},
    {"deviceId": "scale-1", "patientId": "MRN-9", "type": "body_weight", "time": "2024-05-01T07:31:00-05:00",
     "values": {"weight": 190, "unit": "lb"}},
]


def test_replaying_a_batch_writes_nothing(store) -> None:
    assert ingest(store, BATCH) == ["create", "create", "create"]
    versions = {o["id"]: o["meta"]["versionId"] for o in store.search("Observation", {}).resources}
    assert ingest(store, BATCH) == ["noop", "noop", "noop"]
    after = {o["id"]: o["meta"]["versionId"] for o in store.search("Observation", {}).resources}
    assert after == versions and len(after) == 3


def test_two_concurrent_batches_for_the_same_device_create_no_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "fhir.sqlite"
    SqliteFhirStore(path).close()
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def worker() -> None:
        with SqliteFhirStore(path) as store:
            barrier.wait()
            try:
                ingest(store, BATCH)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(2)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors
    with SqliteFhirStore(path) as store:
        assert (count(store, "Observation"), count(store, "Patient"), count(store, "Device")) == (3, 1, 2)


def test_a_remembered_lookup_follows_a_device_relinked_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "fhir.db"
    with SqliteFhirStore(path) as mine, SqliteFhirStore(path) as theirs:
        add_patient(mine, "p1", "mrn-1")
        add_patient(mine, "p2", "mrn-2")
        add_device(mine, "d1", "cuff-1", "p1")
        resolver = IdentityResolver(mine, LOOKUP)
        assert resolver.resolve(group()).patient_id == "p1"
        assert resolver.resolve(group()).patient_id == "p1"  # remembered
        add_device(theirs, "d1", "cuff-1", "p2")  # re-linked by another host on the same file
        assert resolver.resolve(group()).patient_id == "p2"
        theirs.delete("Device", "d1")
        assert failure(lambda: resolver.resolve(group())).reason == "unknown_device"
