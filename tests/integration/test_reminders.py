"""Patient reminders (handlers.reminders) on the embedded services with a fixed clock.

Schedules come from the shipped `notifications/reminders.yaml`: hypertension asks for a blood
pressure at 08:00, heart failure for a weight at 07:30, depression for a PHQ-9 every 14 days at
10:00, reminding again at most every 3 days while it is overdue; caps are 1 a day and 3 a week.
Default quiet hours are 21:00-08:00 in the patient's zone. Outbox messages are what a patient gets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.clock import FixedClock, iso
from common.codes import LOINC, UCUM
from fhirstore.paging import search_all
from handlers.messaging import Messaging
from handlers.reminder_schedule import load_schedule
from handlers.reminders import ReminderDeps, ReminderReport, run_reminder_sweep
from runtime.bootstrap import Services, messaging
from runtime.cohort import careplan
from tests.support.pipeline import make_host

LA = ZoneInfo("America/Los_Angeles")
NY = ZoneInfo("America/New_York")
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
PHONE = "+15550100042"
EMAIL = "patient42@example.org"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))


@pytest.fixture
def services(data_dir: Path, clock: FixedClock) -> Iterator[Services]:
    host = make_host(data_dir, clock=clock)
    yield host.services
    host.services.close()


def local(day: date, hh: int, mm: int = 0, tz: ZoneInfo = LA) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz)


def patient(s: Services, pid: str, *programs: str, tz: ZoneInfo = LA, email: str | None = None,
            language: str | None = None) -> str:
    """A patient in `tz`, enrolled since January 2026 (so March dates are inside the CarePlan)."""
    resource: dict[str, Any] = {
        "resourceType": "Patient", "id": pid, "active": True,
        "telecom": [{"system": "sms", "value": PHONE, "rank": 1}],
        "extension": [{"url": TZ_EXT, "valueCode": tz.key}],
    }
    if email:
        resource["telecom"].append({"system": "email", "value": EMAIL, "rank": 2})
    if language:
        resource["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": language}]},
                                      "preferred": True}]
    s.store.update(resource)
    for program in programs:
        s.store.update(careplan(pid, program, start="2026-01-01"))
    return f"Patient/{pid}"


def store_reading(s: Services, pid: str, code: str, at: datetime, **extra: Any) -> None:
    oid = hashlib.sha256(f"{pid}|{code}|{iso(at)}".encode()).hexdigest()[:32]
    s.store.update({"resourceType": "Observation", "id": oid, "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": code}]},
                    "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": iso(at), **extra})


def blood_pressure(s: Services, pid: str, at: datetime) -> None:
    """A BP panel as ingest writes it: the values live in components of 85354-9."""
    store_reading(s, pid, "85354-9", at, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 128, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 82, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}])


def sweep(s: Services, clock: FixedClock, at: datetime) -> ReminderReport:
    clock.set(at)
    m: Messaging = dataclasses.replace(messaging(s), clock=clock)
    return run_reminder_sweep(ReminderDeps(m, s.rulesets, s.reminders))


def texts(s: Services) -> list[dict[str, Any]]:
    return [msg for msg in s.channels["sms"].provider.messages() if msg["channel"] == "sms"]


def reminders_of(s: Services, patient_ref: str) -> list[dict[str, Any]]:
    return search_all(s.store, "Communication", {"subject": patient_ref,
                                                   "category": "urn:vigil:message-category|reminder"})


# -- a daily reading reminder ------------------------------------------------------------------

def test_reading_reminder_goes_at_8_local_once_however_often_the_sweep_runs(services, clock) -> None:
    s = services
    ref = patient(s, "p1", "hypertension")
    day = date(2026, 11, 20)

    report = sweep(s, clock, local(day, 7, 50))
    assert (report.sent, report.not_due) == (0, 1)
    assert texts(s) == []

    report = sweep(s, clock, local(day, 8, 0))
    assert report.sent == 1
    [sms] = texts(s)
    assert sms["to"] == PHONE
    assert sms["body"] == s.messages.render("reminder_reading", "sms", "en", {
        "org_name": s.settings.org_name, "contact_phone": s.settings.contact_phone}).body

    for minutes in (0, 10, 20, 300):  # an overlapping rerun, the next sweeps, the afternoon
        report = sweep(s, clock, local(day, 8, 0) + timedelta(minutes=minutes))
        assert (report.sent, report.already_sent) == (0, 1)
    assert len(texts(s)) == 1
    [comm] = reminders_of(s, ref)
    assert comm["status"] == "completed"
    assert comm["about"] == [{"reference": "CarePlan/p1-hypertension"}]

    # The next local day is a new reminder.
    report = sweep(s, clock, local(day + timedelta(days=1), 8, 10))
    assert report.sent == 1
    assert len(texts(s)) == 2


def test_a_reading_in_the_patients_local_day_skips_the_reminder(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension")
    day = date(2026, 11, 20)
    # 23:30 on the 19th in Los Angeles is 07:30 UTC on the 20th: yesterday for the patient.
    blood_pressure(s, "p1", local(day - timedelta(days=1), 23, 30))
    assert local(day - timedelta(days=1), 23, 30).astimezone(UTC).date() == day
    assert sweep(s, clock, local(day, 8, 0)).sent == 1

    next_day = day + timedelta(days=1)
    blood_pressure(s, "p1", local(next_day, 0, 30))  # just after local midnight counts as today
    report = sweep(s, clock, local(next_day, 8, 0))
    assert (report.sent, report.skipped_done) == (0, 1)
    assert len(texts(s)) == 1


def test_an_entered_in_error_reading_does_not_count_as_done(services, clock) -> None:
    s = services
    patient(s, "p1", "heart-failure")
    day = date(2026, 11, 20)
    oid = hashlib.sha256(b"wrong").hexdigest()[:32]
    s.store.update({"resourceType": "Observation", "id": oid, "status": "entered-in-error",
                    "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
                    "subject": {"reference": "Patient/p1"}, "effectiveDateTime": iso(local(day, 7, 0)),
                    "valueQuantity": {"value": 80, "unit": "kg", "system": UCUM, "code": "kg"}})
    assert sweep(s, clock, local(day, 8, 0)).sent == 1


def test_reminder_is_in_the_patients_language_and_falls_back_to_email_after_stop(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension", email=EMAIL, language="es-MX")
    s.consent.opt_out(PHONE)
    report = sweep(s, clock, local(date(2026, 11, 20), 9, 0))
    assert report.sent == 1
    assert texts(s) == []
    [mail] = [msg for msg in s.channels["email"].provider.messages() if msg["channel"] == "email"]
    assert mail["to"] == EMAIL
    assert "Le recordamos tomar su medición hoy" in mail["body"]
    statuses = sorted(c["status"] for c in reminders_of(s, "Patient/p1"))
    assert statuses == ["completed", "not-done"]  # the SMS refused (opted out), the email sent


def test_an_opted_out_patient_without_email_gets_nothing_and_it_is_recorded(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension")
    s.consent.opt_out(PHONE)
    for hh in (9, 10):
        report = sweep(s, clock, local(date(2026, 11, 20), hh, 0))
        assert (report.sent, report.not_sent) == (0, 1)
    assert s.channels["sms"].provider.messages() == []
    [comm] = reminders_of(s, "Patient/p1")
    assert comm["status"] == "not-done"


# -- caps --------------------------------------------------------------------------------------

def test_two_programs_due_the_same_morning_send_one_reminder(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension", "copd", "diabetes")
    day = date(2026, 11, 20)
    report = sweep(s, clock, local(day, 8, 0))
    assert (report.sent, report.capped) == (1, 2)
    report = sweep(s, clock, local(day, 12, 0))
    assert (report.sent, report.already_sent, report.capped) == (0, 1, 2)
    assert len(texts(s)) == 1


def test_no_more_than_three_reminders_in_any_seven_days(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension")
    start = date(2026, 11, 20)
    sent_on = []
    for n in range(15):
        day = start + timedelta(days=n)
        for hh in (8, 14):  # two sweeps a day: the second must not find room the first did not
            if sweep(s, clock, local(day, hh, 0)).sent:
                sent_on.append(day)
    assert [d.day for d in sent_on] == [20, 21, 22, 27, 28, 29, 4]
    for d in sent_on:
        assert sum(1 for other in sent_on if d <= other < d + timedelta(days=7)) <= 3
    assert len(texts(s)) == len(sent_on)


# -- quiet hours across daylight-saving changes ------------------------------------------------

@pytest.mark.parametrize(("day", "expected_utc"), [
    (date(2026, 10, 31), datetime(2026, 10, 31, 15, 0, tzinfo=UTC)),  # PDT, UTC-7
    (date(2026, 11, 1), datetime(2026, 11, 1, 16, 0, tzinfo=UTC)),  # DST ends at 02:00: PST, UTC-8
    (date(2026, 3, 7), datetime(2026, 3, 7, 16, 0, tzinfo=UTC)),  # PST, UTC-8
    (date(2026, 3, 8), datetime(2026, 3, 8, 15, 0, tzinfo=UTC)),  # DST starts at 02:00: PDT, UTC-7
])
def test_a_0730_reminder_waits_for_the_end_of_quiet_hours_at_0800_local_across_dst(
        services, clock, day: date, expected_utc: datetime) -> None:
    s = services
    patient(s, "p1", "heart-failure")  # weight reminder at 07:30; quiet hours 21:00-08:00
    first_sent = None
    deferred = 0
    at = datetime(day.year, day.month, day.day, 13, 0, tzinfo=UTC)  # 05:00 or 06:00 local
    while at < datetime(day.year, day.month, day.day, 18, 0, tzinfo=UTC):
        report = sweep(s, clock, at)
        deferred += report.deferred
        if report.sent and first_sent is None:
            first_sent = at
        at += timedelta(minutes=10)
    assert first_sent == expected_utc
    assert first_sent.astimezone(LA).strftime("%H:%M") == "08:00"
    assert deferred == 3  # 07:30, 07:40, 07:50 local
    assert len(texts(s)) == 1


def test_a_reminder_due_in_the_evening_quiet_hours_is_dropped_not_sent_the_next_morning(services, clock) -> None:
    s = services
    patient(s, "p1", "hypertension")
    day = date(2026, 11, 20)
    assert sweep(s, clock, local(day, 21, 30)).deferred == 1  # the sweeps were down all day
    report = sweep(s, clock, local(day + timedelta(days=1), 7, 0))
    assert (report.sent, report.deferred, report.not_due) == (0, 0, 1)
    assert sweep(s, clock, local(day + timedelta(days=1), 8, 0)).sent == 1
    [sms] = texts(s)
    comm = reminders_of(s, "Patient/p1")[0]
    assert comm["sent"] == iso(local(day + timedelta(days=1), 8, 0).astimezone(UTC))
    assert sms["to"] == PHONE


# -- questionnaire reminders -------------------------------------------------------------------

def phq9_response(s: Services, pid: str, at: datetime, how: str) -> None:
    if how == "score":
        store_reading(s, pid, "44261-6", at, valueQuantity={"value": 6, "system": UCUM, "code": "{score}"})
    else:
        s.store.update({"resourceType": "QuestionnaireResponse", "id": f"{pid}-phq9-{at:%Y%m%d}",
                        "status": "completed", "questionnaire": "http://loinc.org/q/44249-1",
                        "subject": {"reference": f"Patient/{pid}"}, "authored": iso(at), "item": []})


@pytest.mark.parametrize("how", ["response", "score"])
def test_questionnaire_reminder_every_14_days_repeating_every_3_while_overdue(services, clock, how: str) -> None:
    s = services
    patient(s, "p1", "depression", tz=NY)
    sent_on: list[date] = []
    days = iter(date(2026, 11, 20) + timedelta(days=n) for n in range(60))

    def run(until: date) -> None:
        for day in days:
            assert sweep(s, clock, local(day, 9, 50, NY)).sent == 0  # due at 10:00
            if sweep(s, clock, local(day, 10, 0, NY)).sent:
                sent_on.append(day)
            if day == until:
                return

    run(date(2026, 11, 25))
    assert [d.day for d in sent_on] == [20, 23]  # overdue: again after 3 days, not daily
    phq9_response(s, "p1", local(date(2026, 11, 25), 12, 0, NY), how)
    run(date(2026, 12, 10))
    # Answered on the 25th: due again 14 days later, on 9 December.
    assert [d.isoformat() for d in sent_on] == ["2026-11-20", "2026-11-23", "2026-12-09"]
    assert sweep(s, clock, local(date(2026, 12, 8), 10, 0, NY)).skipped_done == 1
    [body] = {t["body"] for t in texts(s)}
    assert "check-in is ready" in body


# -- configuration and logs --------------------------------------------------------------------

def test_a_schedule_of_our_own_is_used_and_no_phone_number_or_reading_reaches_the_logs(
        services, clock, caplog: pytest.LogCaptureFixture) -> None:
    s = services
    caplog.set_level(logging.DEBUG)
    patient(s, "p1", "hypertension")
    blood_pressure(s, "p1", local(date(2026, 11, 19), 7, 0))
    schedule = load_schedule("""
programs:
  hypertension:
    daily_cap: 2
    reminders:
      - {id: bp-morning, kind: reading, metric: systolic_bp, at: "09:00"}
      - {id: bp-weight, kind: reading, metric: body_weight, at: "09:00"}
""")
    clock.set(local(date(2026, 11, 20), 9, 0))
    report = run_reminder_sweep(ReminderDeps(dataclasses.replace(messaging(s), clock=clock), s.rulesets, schedule))
    assert report.sent == 2
    assert report.by_reminder == {"bp-morning": 1, "bp-weight": 1}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "reminder sweep: 1 patients, 2 sent" in logged
    for phi in (PHONE, PHONE[2:], "mmHg", "Patient/p1"):
        assert phi not in logged


# -- a CarePlan's bare-date period is the patient's calendar day ------------------------------

TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.mark.parametrize(("period", "sent"), [
    ({"start": "2026-11-21"}, 1),  # began at Tokyo's midnight, 15:00 UTC the day before
    ({"start": "2026-01-01", "end": "2026-11-20"}, 0),  # ended at Tokyo's midnight, though not yet in UTC
])
def test_a_bare_date_careplan_period_is_read_in_the_patients_zone(services, clock, period, sent) -> None:
    s = services
    ref = patient(s, "p1", tz=TOKYO)
    s.store.update({**careplan("p1", "hypertension"), "period": period})
    # 08:30 on 21 November in Tokyo is 23:30 on 20 November in UTC.
    report = sweep(s, clock, local(date(2026, 11, 21), 8, 30, tz=TOKYO))
    assert report.sent == sent
    assert len(reminders_of(s, ref)) == sent
