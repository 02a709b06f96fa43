"""One patient context per event (handlers.patient_file): an Observation that opens an alert reads
the Patient once, with the enrollment, and never reads back the Task it wrote; the patient's
phone number is normalized once for all the messages of the event. Counted on the real embedded
SQLite store, through the FHIR-event handler the triggers call."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import notifications.preferences as preferences
from common.clock import FixedClock, iso
from common.codes import LOINC
from fhirstore.events import event_grid_event
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.enrollment_cache import EnrollmentCache
from handlers.fhir_events import EventDeps, handle_fhir_event
from handlers.sweeps import run_alert_sweep
from runtime.bootstrap import Services, bootstrap, messaging
from runtime.settings import Settings
from tests.support.pipeline import DAYTIME, add_patient


class CountingStore:
    """The real store, counting reads (read and vread) per resource type, and the reads of a
    resource this wrapper saw written. Everything else passes through."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self.reads: Counter[str] = Counter()
        self.reads_after_write: Counter[str] = Counter()
        self.written: set[tuple[str, str]] = set()

    def _count(self, resource_type: str, resource_id: str) -> None:
        self.reads[resource_type] += 1
        if (resource_type, resource_id) in self.written:
            self.reads_after_write[resource_type] += 1

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        self._count(resource_type, resource_id)
        return self.store.read(resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        self._count(resource_type, resource_id)
        return self.store.vread(resource_type, resource_id, version_id)

    def update(self, resource: dict[str, Any], **kwargs: Any) -> Any:
        result = self.store.update(resource, **kwargs)
        self.written.add((resource["resourceType"], resource["id"]))
        return result

    def create(self, resource: dict[str, Any], **kwargs: Any) -> Any:
        result = self.store.create(resource, **kwargs)
        if result.resource is not None:
            self.written.add((resource["resourceType"], result.resource["id"]))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def services(data_dir: Path) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({"VIGIL_CONTACT_PHONE": "+1-555-010-0100"}, data_dir=data_dir),
                  clock=FixedClock(DAYTIME))
    add_patient(s, "p1", phone="(555) 010-0123", programs=("hypertension",))  # national format: normalized
    s.store.update({"resourceType": "Practitioner", "id": "nurse-1", "telecom": [{"system": "sms",
                                                                                  "value": "+15550100201"}]})
    s.store.update({"resourceType": "CareTeam", "id": "team-p1", "status": "active",
                    "subject": {"reference": "Patient/p1"}, "participant": [
                        {"role": [{"coding": [{"code": "nurse"}]}], "member": {"reference": "Practitioner/nurse-1"}}]})
    yield s
    s.close()


def crisis_reading(s: Services) -> dict[str, Any]:
    """A crisis blood pressure (192/118) for Patient/p1 in the store, and the event naming it."""
    def component(code: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}
    obs = s.store.update({
        "resourceType": "Observation", "id": "bp-1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": iso(DAYTIME), "component": [component("8480-6", 192), component("8462-4", 118)],
    }).resource
    return event_grid_event(action="created", resource_type="Observation", resource_id=obs["id"],
                            version_id=obs["meta"]["versionId"], account="vigil", topic="fhir", at=DAYTIME)


@pytest.fixture
def normalized(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the phone numbers the recipients' contact points normalize to E.164."""
    calls: Counter[str] = Counter()
    real = preferences.normalize_e164

    def counting(number: str, **kwargs: Any) -> str:
        calls[number] += 1
        return real(number, **kwargs)

    monkeypatch.setattr(preferences, "normalize_e164", counting)
    return calls


@pytest.mark.parametrize("cache", [None, EnrollmentCache()], ids=["no-cache", "enrollment-cache"])
def test_an_alert_reads_the_patient_once_and_not_the_task_it_wrote(services: Services, normalized: Counter[str],
                                                                   cache: EnrollmentCache | None) -> None:
    s = services
    store = CountingStore(s.store)
    deps = EventDeps(messaging=dataclasses.replace(messaging(s), store=store), rulesets=s.rulesets,
                     dead_letters=s.dead_letters, enrollments=cache)

    outcome = handle_fhir_event(crisis_reading(s), deps)

    assert outcome.decisions["open"] == 1 and outcome.messages_sent == 2  # the patient and the nurse
    assert store.reads["Patient"] == 1
    assert store.reads_after_write == Counter()  # nothing it wrote is read back
    assert normalized["(555) 010-0123"] == 1
    [task] = search_all(s.store, "Task", {"patient": "Patient/p1"})
    assert task["businessStatus"]["coding"][0]["code"] == "level-1"  # the chain ran on the Task as written


def test_the_alert_sweep_reads_each_patient_once(services: Services) -> None:
    """The sweep re-judges the patient's open episode (its quiet-hours patient message) with the
    Patient it read for the enrollment."""
    s = services
    handle_fhir_event(crisis_reading(s), EventDeps(messaging=messaging(s), rulesets=s.rulesets,
                                                   dead_letters=s.dead_letters))
    store = CountingStore(s.store)
    report = run_alert_sweep(dataclasses.replace(messaging(s), store=store), s.rulesets)
    assert (report.patients, report.failed) == (1, 0)
    assert store.reads["Patient"] == 1
