"""Billing codes from fixtures whose codes are known (clinical.md §3), on a real SQLite FHIR store."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from common.clock import FixedClock
from console import billing
from console.enrollment import NewPatient, add_patient, end_enrollment, enroll
from fhirstore.sqlite import SqliteFhirStore
from rules.loader import load_rulesets
from runtime.settings import DEFAULT_RULES

SETUP = date(2026, 10, 1)  # periods: 10-01..10-30, 10-31..11-29, 11-30..12-29
NOW = datetime(2026, 12, 10, 17, 0, tzinfo=UTC)
ZONE = "America/Los_Angeles"


@pytest.fixture
def store(tmp_path: Path) -> SqliteFhirStore:
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(NOW))
    add_patient(s, None, NewPatient("Ottilie", "Thistlewood", "1950-07-29", time_zone=ZONE), "pat-1")
    enroll(s, load_rulesets(DEFAULT_RULES), "pat-1", "hypertension", SETUP)
    return s


def _readings(store: SqliteFhirStore, days: list[date], *, device: bool = True, hour: int = 23) -> None:
    for i, day in enumerate(days):
        # 23:30 Los Angeles time is the next day in UTC: the count must use the patient's calendar.
        at = datetime(day.year, day.month, day.day, hour, 30, tzinfo=ZoneInfo(ZONE))
        obs = {"resourceType": "Observation", "id": f"obs-{day.isoformat()}-{i}-{int(device)}", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/pat-1"}, "effectiveDateTime": at.isoformat(),
               "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "/min"}}
        if device:
            obs["device"] = {"reference": "Device/pat-1-cuff"}
        store.update(obs)


def _second_period(n: int) -> list[date]:
    start = date(2026, 10, 31)
    return [start + timedelta(days=i) for i in range(n)]


def _row(store: SqliteFhirStore, month: str = "2026-11") -> billing.PatientBilling:
    rows = billing.billing_report(store, month, NOW)
    assert [r.patient_id for r in rows] == ["pat-1"]
    return rows[0]


def test_15_device_days_bill_99445(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(15))
    row = _row(store)
    assert (row.period.start, row.period.end, row.period.days) == (date(2026, 10, 31), date(2026, 11, 29), 15)
    assert row.codes == ["99445"]


def test_16_device_days_bill_99454_never_both(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(16))
    assert _row(store).codes == ["99454"]


def test_days_are_counted_in_the_patient_zone_not_utc(store: SqliteFhirStore) -> None:
    # Two readings on one Los Angeles evening (20:00 and 23:30) are one day; in UTC they span two.
    day = date(2026, 11, 2)
    _readings(store, [day], hour=20)
    _readings(store, [day], hour=23)
    assert _row(store).period.days == 1


def test_manual_readings_do_not_count(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(16), device=False)
    assert _row(store).period.days == 0
    assert _row(store).codes == []


def test_one_device_day_bills_nothing(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(1))
    assert _row(store).codes == []


def test_99453_once_in_the_month_of_set_up(store: SqliteFhirStore) -> None:
    assert "99453" in _row(store, "2026-10").codes
    assert "99453" not in _row(store, "2026-11").codes


def _log(store: SqliteFhirStore, minutes: list[int], interactive: bool = True) -> None:
    clock = FixedClock(datetime(2026, 11, 12, 16, 0, tzinfo=UTC))
    for i, m in enumerate(minutes):
        billing.log_time(store, clock, patient_id="pat-1", actor="Practitioner/n1", minutes=m,
                         interactive=interactive and i == 0)


@pytest.mark.parametrize(
    ("minutes", "codes"),
    [
        ([9], []),
        ([10], ["99470"]),
        ([19], ["99470"]),
        ([41], ["99457", "99458"]),
        ([12, 7], ["99470"]),
        ([20], ["99457"]),
        ([39], ["99457"]),
        ([20, 21], ["99457", "99458"]),
        ([60], ["99457", "99458", "99458"]),
    ],
)
def test_treatment_management_minutes(store: SqliteFhirStore, minutes: list[int], codes: list[str]) -> None:
    _log(store, minutes)
    row = _row(store)
    assert row.minutes == sum(minutes)
    assert row.management == codes


def test_minutes_without_an_interactive_communication_bill_nothing(store: SqliteFhirStore) -> None:
    _log(store, [41], interactive=False)
    assert _row(store).management == []


def test_minutes_count_in_their_calendar_month_only(store: SqliteFhirStore) -> None:
    _log(store, [41])
    assert _row(store, "2026-12").minutes == 0


def test_ending_the_enrollment_stops_the_device_count(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(16))  # every day from 10-31 to 11-15
    end_enrollment(store, "pat-1", "hypertension", date(2026, 11, 10))
    row = _row(store)
    assert row.period.days == 11  # 10-31 .. 11-10
    assert row.codes == ["99445"]


def test_csv_has_one_row_per_patient_with_the_codes(store: SqliteFhirStore) -> None:
    _readings(store, _second_period(16))
    _log(store, [41])
    text = billing.billing_csv(billing.billing_report(store, "2026-11", NOW), "2026-11")
    header, row = text.strip().splitlines()
    assert header == ",".join(billing.CSV_FIELDS)
    assert row.endswith(",41,yes,99454 99457 99458")


def test_a_bad_month_is_refused_with_the_format() -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        billing.month_bounds("11/2026")
