"""The alert sweep (handlers.sweeps.run_alert_sweep) on the embedded services with a fixed clock:
"no reading" alerts open once per gap, in the patient's calendar days, and close after a new reading.

The library rule used is heart-failure `hf-no-weight`: `absence: {metric: body_weight, days: 2}`,
`resolve_after: 1h`, patient notification only (no Task, no Flag). `days: 2` means no reading since
local midnight two days before the sweep's local date, in the patient's time zone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.clock import FixedClock, iso
from common.codes import LOINC, UCUM
from fhirstore.paging import search_all
from handlers.sweeps import SweepReport, run_alert_sweep
from rules.loader import parse_ruleset
from runtime.bootstrap import Services, bootstrap
from runtime.cohort import careplan
from runtime.settings import Settings

ZONE = ZoneInfo("America/Chicago")
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
LAST_WEIGHT = datetime(2026, 11, 16, 7, 0, tzinfo=ZONE)

# A program of our own whose absence alert asks for a Task and a Flag, so closing is seen on the Flag.
WEIGH_IN = parse_ruleset("""
ruleset: weigh-in
title: Daily weigh-in
program: {id: weigh-in, canonical: ["urn:vigil:program:weigh-in"]}
rules:
  - id: weigh-in-missed
    title: No weight today or yesterday
    severity: moderate
    when:
      absence: {metric: body_weight, days: 1}
    suppression: {cooldown: 1d, resolve_after: 6h}
    actions: {notify: [care-team], task: true, flag: true}
""", "weigh-in.yaml")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(LAST_WEIGHT + timedelta(hours=1))


@pytest.fixture
def services(data_dir: Path, clock: FixedClock) -> Iterator[Services]:
    s = bootstrap(Settings.from_env({}, data_dir=data_dir), clock=clock)
    yield s
    s.close()


def _patient(s: Services, pid: str, *programs: str, plans: list[dict[str, Any]] | None = None) -> str:
    s.store.update({"resourceType": "Patient", "id": pid, "active": True,
                    "telecom": [{"system": "sms", "value": "+15550100002"}],
                    "extension": [{"url": TZ_EXT, "valueCode": ZONE.key}]})
    for plan in [*(careplan(pid, p) for p in programs), *(plans or [])]:
        s.store.update(plan)
    return f"Patient/{pid}"


def _weigh(s: Services, pid: str, at: datetime, kg: float = 80.0) -> str:
    """A stored body-weight Observation (the sweep reads the store; how it got there does not matter)."""
    oid = hashlib.sha256(f"{pid}|{iso(at)}".encode()).hexdigest()[:32]
    s.store.update({"resourceType": "Observation", "id": oid, "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
                    "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": iso(at),
                    "valueQuantity": {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"}})
    return f"Observation/{oid}"


def _sweep(s: Services, clock: FixedClock, at: datetime, rulesets: list[Any] | None = None) -> SweepReport:
    clock.set(at)
    from runtime.bootstrap import messaging

    m = dataclasses.replace(messaging(s), clock=clock)
    return run_alert_sweep(m, rulesets if rulesets is not None else s.rulesets)


def _issues(s: Services, patient_ref: str) -> list[dict[str, Any]]:
    return search_all(s.store, "DetectedIssue", {"patient": patient_ref})


def _count(s: Services, type_: str) -> int:
    return s.store.search(type_, {"_summary": "count"}).total or 0


def test_no_weight_opens_one_episode_per_gap_in_the_patients_days_and_closes_after_a_reading(
        services: Services, clock: FixedClock) -> None:
    s = services
    patient = _patient(s, "hf-1", "heart-failure")
    last = _weigh(s, "hf-1", LAST_WEIGHT)

    # "No weight for 2 days" is a gap of 2 x 24 h: at 18 Nov 07:00, exactly 48 h after the last
    # weight, it has not opened yet (docs/rules.md "Windows").
    assert _sweep(s, clock, datetime(2026, 11, 18, 7, 0, tzinfo=ZONE)).decisions == {}
    assert _issues(s, patient) == []

    # The next sweep (15 minutes later) opens one episode, not one at local midnight a day later.
    opened_at = datetime(2026, 11, 18, 7, 15, tzinfo=ZONE)
    report = _sweep(s, clock, opened_at)
    assert (report.patients, report.decisions["open"]) == (1, 1)
    [issue] = _issues(s, patient)
    assert issue["code"]["coding"][0]["code"] == "hf-no-weight"
    assert (issue["status"], issue["severity"]) == ("preliminary", "low")
    assert "no body_weight reading" in issue["detail"]
    assert issue["identifiedPeriod"]["start"] == iso(LAST_WEIGHT)  # the gap began at the last weight
    assert issue["implicated"] == [{"reference": last}]
    assert _count(s, "Task") == 0 and _count(s, "Flag") == 0  # task: false, no flag for this rule
    # 07:15 is inside the patient's quiet hours (21:00-08:00 in their zone): a low-severity message
    # waits for the morning.
    assert _count(s, "Communication") == 0

    # The same gap, checked again a day later and every 15 minutes for an hour: still one episode,
    # the message sent once (at the first sweep after quiet hours), the DetectedIssue untouched.
    for minutes in (0, 15, 30, 45, 60):
        report = _sweep(s, clock, datetime(2026, 11, 20, 9, 0, tzinfo=ZONE) + timedelta(minutes=minutes))
        assert "open" not in report.decisions
    [message] = search_all(s.store, "Communication", {})
    assert message["recipient"] == [{"reference": patient}] and message["status"] == "completed"
    assert message["sent"] == iso(datetime(2026, 11, 20, 9, 0, tzinfo=ZONE))
    [again] = _issues(s, patient)
    assert again["meta"]["versionId"] == issue["meta"]["versionId"]
    assert _count(s, "Communication") == 1 and len(s.channels["outbox"].provider.messages()) == 1

    # A weight arrives at 10:00: the gap held until then, so the episode closes once resolve_after
    # (1 h) has passed since 10:00, not since the episode opened.
    _weigh(s, "hf-1", datetime(2026, 11, 20, 10, 0, tzinfo=ZONE))
    assert _sweep(s, clock, datetime(2026, 11, 20, 10, 45, tzinfo=ZONE)).closed == 0
    closed_at = datetime(2026, 11, 20, 11, 0, tzinfo=ZONE)
    report = _sweep(s, clock, closed_at)
    assert report.closed == 1
    [closed] = _issues(s, patient)
    assert closed["status"] == "final"
    assert closed["identifiedPeriod"] == {"start": iso(LAST_WEIGHT), "end": iso(closed_at)}
    assert "has not held" in closed["mitigation"][0]["action"]["text"]
    # Closed stays closed, and the gap that was alerted is not alerted again.
    assert _sweep(s, clock, closed_at + timedelta(hours=1)).decisions == {}
    assert len(_issues(s, patient)) == 1 and _count(s, "Communication") == 1


def test_a_new_gap_after_closing_is_a_new_episode_after_the_cooldown(services: Services, clock: FixedClock) -> None:
    s = services
    patient = _patient(s, "hf-2", "heart-failure")
    _weigh(s, "hf-2", LAST_WEIGHT)
    _sweep(s, clock, datetime(2026, 11, 19, 9, 0, tzinfo=ZONE))
    _weigh(s, "hf-2", datetime(2026, 11, 19, 10, 0, tzinfo=ZONE))
    assert _sweep(s, clock, datetime(2026, 11, 19, 11, 0, tzinfo=ZONE)).closed == 1
    # No weight after the 19th: a second gap, past the rule's 2-day cool-down.
    report = _sweep(s, clock, datetime(2026, 11, 22, 9, 0, tzinfo=ZONE))
    assert report.decisions["open"] == 1
    starts = sorted(i["identifiedPeriod"]["start"] for i in _issues(s, patient))
    assert starts == [iso(LAST_WEIGHT), iso(datetime(2026, 11, 19, 10, 0, tzinfo=ZONE))]


def test_closing_an_episode_with_a_flag_makes_the_flag_inactive(services: Services, clock: FixedClock) -> None:
    s = services
    patient = _patient(s, "w-1", "weigh-in")
    _weigh(s, "w-1", LAST_WEIGHT)
    opened = datetime(2026, 11, 18, 9, 0, tzinfo=ZONE)
    assert _sweep(s, clock, opened, [WEIGH_IN]).decisions["open"] == 1
    [issue] = _issues(s, patient)
    flag, task = s.store.read("Flag", issue["id"]), s.store.read("Task", issue["id"])
    assert (flag["status"], task["status"]) == ("active", "requested")

    _weigh(s, "w-1", datetime(2026, 11, 18, 10, 0, tzinfo=ZONE))
    # The reading ends the gap, but the episode closes only once resolve_after (6 h) has passed.
    assert _sweep(s, clock, opened + timedelta(hours=2), [WEIGH_IN]).closed == 0
    assert s.store.read("Flag", issue["id"])["status"] == "active"
    assert _sweep(s, clock, opened + timedelta(hours=7), [WEIGH_IN]).closed == 1
    assert s.store.read("DetectedIssue", issue["id"])["status"] == "final"
    flag = s.store.read("Flag", issue["id"])
    assert flag["status"] == "inactive" and flag["period"]["end"] == iso(opened + timedelta(hours=7))
    # Closing does not touch the Task: an unacknowledged Task keeps escalating until staff act.
    assert s.store.read("Task", issue["id"])["status"] == "requested"


def test_patients_not_enrolled_get_nothing(services: Services, clock: FixedClock) -> None:
    s = services
    ended = careplan("p-ended", "heart-failure") | {"period": {"start": "2026-10-01", "end": "2026-11-01"}}
    completed = careplan("p-done", "heart-failure") | {"status": "completed"}
    refs = [_patient(s, "p-none"), _patient(s, "p-ended", plans=[ended]), _patient(s, "p-done", plans=[completed]),
            _patient(s, "p-other", "weigh-in")]  # enrolled only in a program with no loaded ruleset
    for pid in ("p-none", "p-ended", "p-done", "p-other"):
        _weigh(s, pid, LAST_WEIGHT)
    report = _sweep(s, clock, datetime(2026, 11, 25, 9, 0, tzinfo=ZONE))  # 9 days without a weight
    assert report.patients == 0 and report.decisions == {}
    for ref in refs:
        assert _issues(s, ref) == []
    assert _count(s, "DetectedIssue") == 0 and _count(s, "Communication") == 0


LONG_RESOLVE = parse_ruleset("""
ruleset: weigh-in-slow
title: Daily weigh-in, slow to resolve
program: {id: weigh-in, canonical: ["urn:vigil:program:weigh-in"]}
rules:
  - id: weigh-in-gap
    title: No weight for a day
    severity: low
    when:
      absence: {metric: body_weight, within: 24h}
    suppression: {cooldown: 1d, resolve_after: 72h}
    actions: {notify: [care-team], task: false}
""", "weigh-in-slow.yaml")


def test_an_absence_episode_closes_resolve_after_the_gap_ended_even_once_that_left_the_window(
        services: Services, clock: FixedClock) -> None:
    """resolve_after (72 h) is longer than the rule's window (24 h + a day's margin): the reading
    that ended the gap falls out of the loaded window before the episode may close. It still closes
    72 h after that reading, not never and not at once."""
    s = services
    plan = careplan("wi-1", "weigh-in")
    plan["instantiatesCanonical"] = ["urn:vigil:program:weigh-in"]
    patient = _patient(s, "wi-1", plans=[plan])
    _weigh(s, "wi-1", LAST_WEIGHT)
    assert _sweep(s, clock, LAST_WEIGHT + timedelta(hours=30), [LONG_RESOLVE]).decisions["open"] == 1
    resumed = LAST_WEIGHT + timedelta(hours=40)
    for hours in range(0, 80, 6):  # readings every 6 h from then on
        _weigh(s, "wi-1", resumed + timedelta(hours=hours))
    for after, closed in ((timedelta(hours=50), 0), (timedelta(hours=71), 0), (timedelta(hours=72), 1)):
        report = _sweep(s, clock, resumed + after, [LONG_RESOLVE])
        assert report.closed == closed, after
    [issue] = _issues(s, patient)
    assert issue["status"] == "final"
