"""The value against its threshold, as the inbox shows it, from real explanation texts."""

from __future__ import annotations

import pytest

from console.queries import comparison


@pytest.mark.parametrize(("detail", "shown"), [
    ("mean of 14 systolic_bp readings in the 7d up to this reading 144 mm[Hg] >= 130 mm[Hg] (default 130, no usable "
     "active goal for systolic_bp (high bound)).", "144 mm[Hg] ≥ 130 mm[Hg]"),
    ("body_weight first to last reading since the start of the day 1 day(s) earlier (patient's time zone) up to this "
     "reading: 1.72 kg (82.87 kg to 84.59 kg) >= 0.91 kg (rule value 2 [lb_av]).", "1.72 kg ≥ 0.91 kg"),
    ("spo2 87 % < 88 % (default 88, no usable active goal for spo2 (low bound)).", "87 % < 88 %"),
    ("glucose 50 mg/dL < 70 mg/dL (rule value 70 mg/dL). Severity raised to high: glucose 50 mg/dL < 54 mg/dL "
     "(rule value 54 mg/dL).", "50 mg/dL < 70 mg/dL; 50 mg/dL < 54 mg/dL"),
    ("no readings for 3 days", ""),
])
def test_comparison(detail: str, shown: str) -> None:
    assert comparison(detail) == shown


def test_the_inbox_puts_stat_above_all_and_reads_the_priority_an_alert_without_a_task_carries(tmp_path) -> None:
    """docs/console.md: "STAT above all". A rule may route a moderate (or low, Task-less) alert as
    `stat` (docs/rules.md §5); the alert carries its priority on the DetectedIssue
    (urn:vigil:extension:alert-priority) whether or not a Task exists."""
    from console.queries import inbox
    from fhirstore.sqlite import SqliteFhirStore
    from rules.episode_resources import PRIORITY_EXT

    def issue(iid: str, severity: str, priority: str, start: str) -> dict:
        return {"resourceType": "DetectedIssue", "id": iid, "status": "preliminary", "severity": severity,
                "patient": {"reference": "Patient/p1"}, "identifiedPeriod": {"start": start},
                "code": {"coding": [{"system": "urn:vigil:rule", "code": f"rule-{iid}"}]},
                "extension": [{"url": PRIORITY_EXT, "valueCode": priority}]}

    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "p1"})
        store.update(issue("high-urgent", "high", "urgent", "2026-11-20T08:00:00Z"))
        store.update({"resourceType": "Task", "id": "high-urgent", "status": "requested", "intent": "order",
                      "priority": "urgent"})
        store.update(issue("moderate-stat", "moderate", "stat", "2026-11-20T09:00:00Z"))
        store.update({"resourceType": "Task", "id": "moderate-stat", "status": "requested", "intent": "order",
                      "priority": "stat"})
        store.update(issue("low-stat", "low", "stat", "2026-11-20T10:00:00Z"))  # no Task
        rows = inbox(store, [])
    assert [(r.issue_id, r.priority) for r in rows] == [
        ("moderate-stat", "stat"), ("low-stat", "stat"), ("high-urgent", "urgent")]
    assert all(r.stat for r in rows[:2])


def test_the_gap_list_counts_calendar_days_in_the_patients_zone(tmp_path) -> None:
    """Days since the last reading are the patient's calendar days, as billing and adherence count
    them: 23:30 yesterday in Los Angeles is one day ago at 00:30 today (an hour, not a day, by the clock)."""
    from datetime import UTC, date, datetime

    from console.enrollment import NewPatient, add_patient, enroll
    from console.queries import data_gaps
    from fhirstore.sqlite import SqliteFhirStore
    from rules.loader import load_rulesets
    from runtime.settings import DEFAULT_RULES

    now = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)  # 00:30 on the 21st in Los Angeles
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        add_patient(store, None, NewPatient("Ottilie", "Thistlewood", "1950-07-29", time_zone="America/Los_Angeles"),
                    "la")
        enroll(store, load_rulesets([DEFAULT_RULES]), "la", "hypertension", date(2026, 11, 1))
        store.update({"resourceType": "Observation", "id": "o1", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "subject": {"reference": "Patient/la"},
                      "effectivePeriod": {"start": "2026-11-21T07:30:00Z", "end": "2026-11-21T07:30:00Z"},
                      "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "/min"}})
        [row] = data_gaps(store, now)
        assert (row.patient_id, row.program, row.days_since) == ("la", "hypertension", 1)


def test_the_gap_list_judges_each_program_by_the_readings_its_rules_read(tmp_path) -> None:
    """A glucometer that went quiet is a diabetes gap even while the BP cuff still sends."""
    from datetime import UTC, date, datetime

    from console.enrollment import NewPatient, add_patient, enroll
    from console.queries import data_gaps
    from fhirstore.sqlite import SqliteFhirStore
    from rules.loader import load_rulesets
    from runtime.settings import DEFAULT_RULES

    rulesets = load_rulesets([DEFAULT_RULES])
    now = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        add_patient(store, None, NewPatient("Ottilie", "Thistlewood", "1950-07-29", time_zone="UTC"), "p")
        for program in ("hypertension", "diabetes"):
            enroll(store, rulesets, "p", program, date(2026, 11, 1))
        for oid, code, unit, value, at in (("g", "2339-0", "mg/dL", 120, "2026-11-15T09:00:00Z"),
                                           ("wt", "29463-7", "kg", 80, "2026-11-21T09:00:00Z")):
            store.update({"resourceType": "Observation", "id": oid, "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                          "subject": {"reference": "Patient/p"}, "effectiveDateTime": at,
                          "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit}})
        store.update({"resourceType": "Observation", "id": "bp", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                      "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-11-20T09:00:00Z",
                      "component": [
                          {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                           "valueQuantity": {"value": 128, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                          {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                           "valueQuantity": {"value": 78, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]})
        rows = {r.program: r.days_since for r in data_gaps(store, now, rulesets)}
        assert rows == {"diabetes": 6, "hypertension": 1}
        # Without the rulesets: the newest reading of any kind (the weight of today).
        assert {r.program: r.days_since for r in data_gaps(store, now)} == {"diabetes": 0, "hypertension": 0}
