"""A synthetic, reproducible RPM cohort: patients, their device streams, a few deteriorations.

Readings come at plausible local times (morning and evening) with physiological noise, in each
patient's own time zone (timestamps carry the local offset, as devices send them). Some patients
deteriorate: blood pressure rising into the crisis range, an overnight weight gain, oxygen
saturation falling, a hypoglycemic night. A handful of malformed messages exercise the
dead-letter path. The same seed and start date always give the same messages.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
# Fictional names and birth dates, so the demo and the tests carry the PHI a real Patient does and
# the suite can check none of it reaches a log line (tests/support/phi_guard.py reads these tables).
GIVEN_NAMES = ["Amara", "Bartholomew", "Consuelo", "Desmond", "Evangelina", "Fitzgerald", "Graciela", "Horatio",
               "Imelda", "Jebediah", "Katarina", "Leopold", "Marisol", "Nikolai", "Ottilie", "Percival"]
FAMILY_NAMES = ["Abernathy", "Quintanilla", "Okonkwo-Reyes", "Vasquez-Lindqvist", "Thistlewood", "Marchetti",
                "Szymanski", "Oyelaran", "Fairweather", "Castellanos", "Yamaguchi-Brandt", "Delacroix-Moss"]
BIRTH_DATES = ["1941-03-17", "1946-11-02", "1950-07-29", "1953-01-08", "1957-09-23", "1962-05-14",
               "1938-12-30", "1944-04-19", "1959-02-26", "1948-08-05", "1965-10-11"]


def fictional_identity(n: int) -> dict[str, Any]:
    """The name and birth date of fictional patient number `n` (deterministic)."""
    return {"name": [{"use": "official", "family": FAMILY_NAMES[n % len(FAMILY_NAMES)],
                      "given": [GIVEN_NAMES[n % len(GIVEN_NAMES)]]}],
            "birthDate": BIRTH_DATES[n % len(BIRTH_DATES)]}
PROGRAMS = ("hypertension", "heart-failure", "copd", "diabetes")


@dataclass
class DemoPatient:
    id: str
    zone: str
    programs: tuple[str, ...]
    baseline: dict[str, float]
    episode: str | None = None  # bp-rise | weight-gain | spo2-drop | hypoglycemia
    episode_day: int = 0

    def resource(self) -> dict[str, Any]:
        # Synthetic, fictional: 555-01xx numbers are reserved for fiction in North America.
        n = int(self.id.rsplit("-", 1)[1])
        return {
            "resourceType": "Patient",
            "id": self.id,
            "identifier": [{"system": "urn:vigil:demo-mrn", "value": f"DEMO{n:04d}"}],
            "active": True,
            **fictional_identity(n),
            "telecom": [{"system": "sms", "value": f"+1555010{n:04d}", "rank": 1}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]},
                               "preferred": True}],
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": self.zone}],
        }

    def careplans(self) -> list[dict[str, Any]]:
        return [careplan(self.id, program) for program in self.programs]

    def devices(self) -> list[dict[str, Any]]:
        return [device(f"{self.id}-{kind}", self.id) for kind in ("cuff", "oximeter", "meter", "scale")]


def device(device_id: str, patient_id: str) -> dict[str, Any]:
    """A home device registered to a patient at enrollment: ingest finds the patient through it
    (MedTech's Lookup identity mode)."""
    return {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [{"value": device_id}],
        "status": "active",
        "patient": {"reference": f"Patient/{patient_id}"},
    }


STAFF = (("demo-nurse", "nurse", "+15550100901"), ("demo-physician", "physician", "+15550100902"),
         ("demo-oncall", "on-call", "+15550100903"), ("demo-care-manager", "care-manager", "+15550100904"))


def staff() -> list[dict[str, Any]]:
    """A small fictional care team: Practitioners reachable by SMS."""
    return [{"resourceType": "Practitioner", "id": pid, "active": True,
             "telecom": [{"system": "sms", "value": phone}]} for pid, _, phone in STAFF]


def care_team(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "id": f"{patient_id}-team",
        "status": "active",
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [{"role": [{"coding": [{"code": role}]}], "member": {"reference": f"Practitioner/{pid}"}}
                        for pid, role, _ in STAFF],
    }


def careplan(patient_id: str, program: str, start: str = "2026-10-01") -> dict[str, Any]:
    """An active CarePlan enrolling the patient in a program (rules/library names programs by
    canonical `urn:vigil:program:<id>`)."""
    return {
        "resourceType": "CarePlan",
        "id": f"{patient_id}-{program}",
        "status": "active",
        "intent": "plan",
        "instantiatesCanonical": [f"urn:vigil:program:{program}"],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": start},
    }


@dataclass
class Cohort:
    patients: list[DemoPatient]
    messages: list[bytes] = field(default_factory=list)
    malformed: int = 0

    @property
    def readings(self) -> int:
        return len(self.messages) - self.malformed


def build_cohort(*, patients: int = 50, days: int = 14, start: date = date(2026, 11, 1), seed: int = 7) -> Cohort:
    rng = random.Random(seed)
    cohort = Cohort([])
    episodes = ["bp-rise", "weight-gain", "spo2-drop", "hypoglycemia"]
    for i in range(1, patients + 1):
        programs = tuple(sorted(set(rng.sample(PROGRAMS, k=rng.choice((1, 1, 2))))))
        p = DemoPatient(
            id=f"demo-{i:03d}",
            zone=rng.choice(ZONES),
            programs=programs,
            baseline={
                "sys": rng.gauss(134, 10), "dia": rng.gauss(82, 6), "hr": rng.gauss(74, 8),
                "spo2": rng.uniform(94.5, 98.0), "kg": rng.uniform(60, 115), "glu": rng.uniform(100, 150),
            },
        )
        # Roughly one patient in six deteriorates, in a way that fits their program.
        if i % 6 == 0:
            p.episode = episodes[(i // 6) % len(episodes)]
            needs = {"bp-rise": "hypertension", "weight-gain": "heart-failure", "spo2-drop": "copd",
                     "hypoglycemia": "diabetes"}[p.episode]
            p.programs = tuple(sorted({*p.programs, needs}))
            p.episode_day = rng.randint(days // 3, max(days // 3, days - 3))
        cohort.patients.append(p)
    for p in cohort.patients:
        for day in range(days):
            cohort.messages.extend(_day_of_readings(rng, p, start + timedelta(days=day), day))
    cohort.messages.extend(_malformed(start))
    cohort.malformed = 6
    return cohort


def _at(rng: random.Random, day: date, zone: str, hour: float, spread_min: int) -> str:
    minutes = int(hour * 60) + rng.randint(-spread_min, spread_min)
    local = datetime.combine(day, time(0, 0), ZoneInfo(zone)) + timedelta(minutes=minutes)
    return local.replace(microsecond=0).isoformat()


def _msg(p: DemoPatient, device: str, type_: str, when: str, values: dict[str, Any]) -> bytes:
    return json.dumps(
        {"deviceId": f"{p.id}-{device}", "patientId": p.id, "type": type_, "time": when, "values": values}
    ).encode()


def _day_of_readings(rng: random.Random, p: DemoPatient, day: date, n: int) -> list[bytes]:
    out: list[bytes] = []
    b = p.baseline
    since = n - p.episode_day  # days into the episode (negative: not yet)
    for slot, hour in (("am", 7.5), ("pm", 20.0)):
        when = _at(rng, day, p.zone, hour, 40)
        if {"hypertension", "heart-failure"} & set(p.programs):
            rise = 14 * since + (6 if slot == "pm" else 0) if p.episode == "bp-rise" and since >= 0 else 0
            sys_ = round(rng.gauss(b["sys"] + rise, 7))
            dia = round(rng.gauss(b["dia"] + rise * 0.45, 5))
            out.append(_msg(p, "cuff", "blood_pressure", when, {"systolic": sys_, "diastolic": min(dia, sys_ - 20)}))
            out.append(_msg(p, "cuff", "heart_rate", when, {"bpm": round(rng.gauss(b["hr"], 5))}))
        if "copd" in p.programs:
            drop = min(7.0, 2.5 * (since + 1)) if p.episode == "spo2-drop" and 0 <= since <= 3 else 0.0
            spo2 = round(min(100.0, rng.gauss(b["spo2"] - drop, 0.8)))
            out.append(_msg(p, "oximeter", "spo2", _at(rng, day, p.zone, hour + 0.5, 20), {"percent": spo2}))
        if "diabetes" in p.programs:
            low = p.episode == "hypoglycemia" and since == 0 and slot == "am"
            glucose = round(rng.uniform(45, 52) if low else rng.gauss(b["glu"] + (25 if slot == "pm" else 0), 15))
            unit_mmol = int(p.id[-1]) % 3 == 0  # some meters report mmol/L
            values: dict[str, object] = (
                {"glucose": round(glucose / 18.016, 1), "unit": "mmol/L"} if unit_mmol else {"glucose": glucose}
            )
            out.append(_msg(p, "meter", "glucose", _at(rng, day, p.zone, hour - 0.5, 20), values))
    if "heart-failure" in p.programs:
        gain = (
            1.4
            if p.episode == "weight-gain" and since == 0
            else (1.6 if p.episode == "weight-gain" and since > 0 else 0)
        )
        kg = rng.gauss(b["kg"] + gain, 0.2)
        lb_scale = int(p.id[-1]) % 2 == 0  # some scales report pounds
        values = {"weight": round(kg / 0.45359237, 1), "unit": "[lb_av]"} if lb_scale else {"weight": round(kg, 1)}
        out.append(_msg(p, "scale", "body_weight", _at(rng, day, p.zone, 6.75, 15), values))
    return out


def _malformed(start: date) -> list[bytes]:
    when = f"{start.isoformat()}T08:00:00-05:00"
    return [
        b'{"deviceId": "demo-001-cuff", "patientId": "demo-001", "type": "blood_pressure", ',  # truncated JSON
        json.dumps({"deviceId": "x-1", "patientId": "demo-001", "type": "ecg_strip", "time": when,
                    "values": {"mv": 1}}).encode(),  # unknown type
        json.dumps({"deviceId": "x-2", "patientId": "demo-002", "type": "heart_rate",
                    "values": {"bpm": 70}}).encode(),  # missing time
        json.dumps({"deviceId": "x-3", "patientId": "demo-003", "type": "heart_rate",
                    "time": f"{start.isoformat()}T08:00:00", "values": {"bpm": 70}}).encode(),  # no offset
        json.dumps({"deviceId": "x-4", "patientId": "demo-004", "type": "heart_rate", "time": when,
                    "values": {"bpm": 70}, "blob": "x" * 300_000}).encode(),  # oversized
        json.dumps({"deviceId": "x-5", "patientId": "no-such-patient", "type": "heart_rate", "time": when,
                    "values": {"bpm": 70}}).encode(),  # a device registered to no patient
    ]
