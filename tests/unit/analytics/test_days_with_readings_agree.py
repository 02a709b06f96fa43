"""Days with readings mean one thing everywhere: the analytics views count the patient's calendar
days as billing (and the console's adherence and gap list) do, on readings that straddle UTC midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from analytics.export import run_export
from analytics.views.duck import materialize, query
from common.clock import FixedClock
from common.patient_time import days_with_readings, patient_time_zone
from console import billing
from console.enrollment import NewPatient, add_patient, enroll
from fhirstore.sqlite import SqliteFhirStore
from rules.loader import load_rulesets
from runtime.settings import DEFAULT_RULES

# The query docs/analytics.md gives for days with readings per patient (device readings only, as billing).
DAYS_WITH_READINGS_SQL = """SELECT r.patient, count(DISTINCT CAST(timezone(coalesce(z.time_zone, 'UTC'),
       CAST(r.effective AS TIMESTAMPTZ)) AS DATE)) AS days
FROM reading_days r LEFT JOIN patient_time_zones z ON z.id = r.patient
WHERE r.device
GROUP BY r.patient"""

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
# Evening readings in Los Angeles and Tokyo mornings fall on another UTC day than the local one.
READINGS = {
    "pat-la": ["2026-11-02T03:30:00Z", "2026-11-02T05:00:00Z", "2026-11-02T20:00:00Z", "2026-11-04T07:59:00Z"],
    "pat-tokyo": ["2026-11-01T15:30:00Z", "2026-11-02T14:00:00Z", "2026-11-05T01:00:00Z"],
    "pat-utc": ["2026-11-01T23:59:00Z", "2026-11-02T00:01:00Z"],
}
ZONES = {"pat-la": "America/Los_Angeles", "pat-tokyo": "Asia/Tokyo", "pat-utc": ""}


def _store(path: Path) -> SqliteFhirStore:
    store = SqliteFhirStore(path, clock=FixedClock(NOW))
    rulesets = load_rulesets(DEFAULT_RULES)
    for pid, zone in ZONES.items():
        patient = NewPatient("Ottilie", "Thistlewood", "1950-07-29", time_zone=zone or "UTC")
        add_patient(store, None, patient, pid)
        if not zone:  # a patient who records no zone: the extension removed, UTC by default
            res = store.read("Patient", pid)
            res["extension"] = [e for e in res["extension"] if "timezone" not in e["url"]]
            store.update(res)
        enroll(store, rulesets, pid, "hypertension", date(2026, 11, 1))
        for i, at in enumerate(READINGS[pid]):
            # As ingest writes them: an effectivePeriod in UTC, with the device that sent it.
            store.update({"resourceType": "Observation", "id": f"{pid}-{i}", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          "subject": {"reference": f"Patient/{pid}"}, "effectivePeriod": {"start": at, "end": at},
                          "device": {"reference": f"Device/{pid}-cuff"},
                          "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "/min"}})
        # A manual entry on another day: not a device day for billing, nor for the view's count.
        store.update({"resourceType": "Observation", "id": f"{pid}-manual", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2026-11-10T12:00:00Z",
                      "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "/min"}})
    return store


def test_the_views_count_the_patients_calendar_days_as_billing_does(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = _store(data / "fhir.db")
    billed = {}
    for pid in ZONES:
        row = billing.patient_billing(store, store.read("Patient", pid), "2026-11", NOW)
        assert row is not None and row.period is not None
        billed[pid] = row.period.days
        tz = patient_time_zone(store.read("Patient", pid))
        times = [datetime.fromisoformat(t) for t in READINGS[pid]]
        assert row.period.days == len(days_with_readings(times, tz))
    # The premise: in UTC days the LA and Tokyo patients would count otherwise.
    assert billed == {"pat-la": 3, "pat-tokyo": 2, "pat-utc": 2}
    utc_days = {pid: len({t[:10] for t in ts}) for pid, ts in READINGS.items()}
    assert utc_days["pat-la"] != billed["pat-la"] and utc_days["pat-tokyo"] != billed["pat-tokyo"]
    store.close()

    lake, db = tmp_path / "lake", tmp_path / "views.duckdb"
    run_export(data / "fhir.db", lake, clock=FixedClock(NOW + timedelta(hours=1)), grace_s=0)
    materialize(lake, db, names=["reading_days", "patient_time_zones"])
    assert dict(query(db, DAYS_WITH_READINGS_SQL)) == billed


def test_docs_give_the_same_query() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "analytics.md").read_text("utf-8")
    assert DAYS_WITH_READINGS_SQL in docs
