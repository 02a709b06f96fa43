"""A small RPM cohort in a real embedded store, seeded with PHI canaries for the de-identification checks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.clock import FixedClock
from fhirstore.sqlite import SqliteFhirStore

# Strings that must never appear in de-identified output.
CANARIES = {
    "name": "Zebulon", "family": "Quaxworth", "phone": "555-867-5309", "email": "zeb.quax@example.org",
    "street": "42 Wallaby Way", "city": "Snoqualmish", "mrn": "MRN-7734-CANARY", "birth": "1951-03-17",
    "patient_id": "pat-canary-1", "device_serial": "SN-CANARY-99",
}


def patient(i: int) -> dict:
    pid = CANARIES["patient_id"] if i == 0 else f"pat-{i}"
    return {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": "urn:mrn", "value": CANARIES["mrn"] if i == 0 else f"MRN-{i}"}],
        "name": [{"family": CANARIES["family"], "given": [CANARIES["name"]]}],
        "telecom": [{"system": "phone", "value": CANARIES["phone"]}, {"system": "email", "value": CANARIES["email"]}],
        "address": [{"line": [CANARIES["street"]], "city": CANARIES["city"], "postalCode": "98052", "state": "WA"}],
        "birthDate": CANARIES["birth"], "gender": "female",
    }


def observation(i: int, patient_id: str, value: float) -> dict:
    return {
        "resourceType": "Observation", "id": f"obs-{i}", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "device": {"reference": "Device/dev-1", "display": CANARIES["device_serial"]},
        "effectiveDateTime": f"2026-11-{10 + i % 10:02d}T09:{i % 60:02d}:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
        "note": [{"text": f"Called {CANARIES['name']} at {CANARIES['phone']}"}],
    }


def seed(path: Path, clock: FixedClock, patients: int = 3, observations: int = 30) -> SqliteFhirStore:
    store = SqliteFhirStore(path, clock=clock)
    for i in range(patients):
        store.update(patient(i))
    for i in range(observations):
        clock.advance(timedelta(minutes=7))
        p = patient(i % patients)["id"]
        store.update(observation(i, p, 60 + i % 7 if i % 2 else 60.5 + i % 7))
    return store
