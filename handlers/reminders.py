"""Patient reminders: "take your reading", "your questionnaire is due".

The reminder sweep (a timer, every 10 minutes) walks the patients enrolled by an active CarePlan
and, for each reminder of their programs (`handlers.reminder_schedule`) whose time has come in
the patient's own time zone today:
- skips it when already done: a reading of the metric in the patient's local day, or a response
  to the questionnaire within its period;
- skips it when the patient's reminder caps are reached (per local day and per rolling 7 local
  days; TCPA healthcare-message exemption, FCC 15-72), counting every reminder
  Communication the patient got, from any program, on any channel;
- defers it while the patient is in quiet hours (the next sweep after they end sends it);
- otherwise sends it on the patient's preferred channel with the others as fallbacks, in their
  language. The message key is `reminder|<patient>|<reminder id>|<local date>`, so sweeps that
  overlap or repeat send it once; a reminder that was never sent on its day is dropped, not carried
  to the next morning ("take your reading today" would be wrong by then).
SMS opt-outs are the channel's business: an opted-out number fails permanently and the message
falls back to email, or is recorded as not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from common.clock import iso, parse_instant
from common.codes import LOINC, vigil_system
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.compose import compose
from handlers.messaging import Messaging
from handlers.patient_data import code_query
from handlers.patient_file import patient_file
from handlers.reminder_schedule import Reminder, ReminderSchedule
from notifications.dispatch import COMMUNICATION_SYSTEM, TransientDeliveryError, deliver, message_id_for
from notifications.preferences import send_at
from notifications.quiet_hours import at_local_time, zone
from rules.enrollment import careplan_active, enrolls
from rules.model import Program, Ruleset
from rules.pro import INSTRUMENTS, ScoringError, identify

log = logging.getLogger(__name__)

REMINDER_CATEGORY = "reminder"
MESSAGE_CATEGORY_SYSTEM = vigil_system("message-category")
# Statuses of a reading or response that count as done (not entered-in-error, not cancelled).
DONE_OBSERVATION = "final,amended,corrected,preliminary"
DONE_RESPONSE = ("completed", "amended")


# -- the sweep ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReminderDeps:
    """What the reminder sweep needs (built once by the composition root: `runtime.bootstrap.reminder_deps`)."""

    messaging: Messaging
    rulesets: list[Ruleset]  # how CarePlans name each program
    schedule: ReminderSchedule


@dataclass
class ReminderReport:
    patients: int = 0  # enrolled patients with at least one reminder in their programs
    sent: int = 0
    skipped_done: int = 0  # the reading or questionnaire was already done
    deferred: int = 0  # quiet hours: a later sweep sends it
    capped: int = 0  # the patient's daily or weekly reminder cap was reached
    already_sent: int = 0  # this reminder went out earlier today (a repeated sweep)
    not_due: int = 0  # its time has not come yet today
    recently_reminded: int = 0  # an overdue questionnaire reminded within its repeat_days
    not_sent: int = 0  # every channel refused it for good (opted out, bad address): recorded as not-done
    retrying: int = 0  # a transient channel failure; the next sweep retries with the same key
    unreachable: int = 0  # no contact on a configured channel
    failed: int = 0  # patients whose sweep raised; the others went on
    by_reminder: dict[str, int] = field(default_factory=dict)  # sent, per reminder id


@dataclass
class _History:
    """The patient's recent reminder Communications: what counts against the caps, and by id."""

    times: list[datetime]
    by_message_id: dict[str, dict[str, Any]]

    def count_since(self, start: datetime) -> int:
        return sum(1 for t in self.times if t >= start)


def run_reminder_sweep(deps: ReminderDeps) -> ReminderReport:
    """Send the reminders that are due now; safe to run as often as wanted."""
    m, schedule = deps.messaging, deps.schedule
    now = m.clock.now()
    report = ReminderReport()
    programs = _programs(schedule, deps.rulesets)
    careplans: dict[str, list[dict[str, Any]]] = {}
    for cp in search_all(m.store, "CarePlan", {"status": "active", "_count": "1000"}):
        ref = (cp.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/"):
            careplans.setdefault(ref, []).append(cp)
    for patient_ref in sorted(careplans):
        if not any(enrolls(cp, program) for cp in careplans[patient_ref] for program in programs.values()):
            continue
        try:
            _remind_patient(m, schedule, patient_ref, careplans[patient_ref], programs, now, report)
        except Exception as exc:  # one patient's failure must not stop the sweep for the others
            report.failed += 1
            log.warning("reminder sweep failed for one patient: %s", type(exc).__name__)
    log.info("reminder sweep: %d patients, %d sent, %d done, %d deferred, %d capped, %d failed",
             report.patients, report.sent, report.skipped_done, report.deferred, report.capped, report.failed)
    return report


def _programs(schedule: ReminderSchedule, rulesets: list[Ruleset]) -> dict[str, Program]:
    """How CarePlans name each scheduled program: the ruleset's own `program`, or, for a program
    with reminders but no rules, the canonical `urn:vigil:program:<id>`."""
    by_id = {rs.program.id: rs.program for rs in rulesets}
    return {pid: by_id.get(pid) or Program(id=pid, canonical=[f"urn:vigil:program:{pid}"]) for pid in schedule.programs}


def _enrolled(careplans: list[dict[str, Any]], programs: dict[str, Program], now: datetime,
              tz: tzinfo) -> dict[str, str]:
    """Program id -> the CarePlan enrolling the patient in it now. A bare-date period bound is a
    calendar day in the patient's zone (`rules.enrollment.careplan_active`), as the rules read it."""
    active = [cp for cp in careplans if careplan_active(cp, now, tz)]
    return {pid: cp["id"] for pid, program in programs.items() for cp in reversed(active) if enrolls(cp, program)}


def _remind_patient(m: Messaging, schedule: ReminderSchedule, patient_ref: str, careplans: list[dict[str, Any]],
                    programs: dict[str, Program], now: datetime, report: ReminderReport) -> None:
    recipient = patient_file(m.store, patient_ref, m.defaults, now).recipient
    if recipient is None:
        if schedule.for_programs(_enrolled(careplans, programs, now, UTC))[0]:
            log.warning("active CarePlan for a patient the store does not have; no reminders")
        return
    tz = zone(recipient.time_zone)
    enrolled = _enrolled(careplans, programs, now, tz)
    reminders, daily_cap, weekly_cap = schedule.for_programs(enrolled)
    if not reminders:
        return
    report.patients += 1
    today = now.astimezone(tz).date()
    due = [r for r in reminders if at_local_time(today, r.at, tz) <= now]
    report.not_due += len(reminders) - len(due)
    if not due:
        return
    if not recipient.contacts:
        report.unreachable += len(due)
        return
    day_start = at_local_time(today, time(0), tz)
    week_start = at_local_time(today - timedelta(days=6), time(0), tz)
    lookback = max([6, *(r.repeat_days - 1 for r in due)])
    history = _history(m.store, patient_ref, at_local_time(today - timedelta(days=lookback), time(0), tz))
    quiet_until = send_at(recipient, category=REMINDER_CATEGORY, urgent=False, now=now)
    patient_id = patient_ref.partition("/")[2]
    for reminder in due:
        if _done(m.store, patient_ref, reminder, today, tz):
            report.skipped_done += 1
            continue
        key = _key(patient_id, reminder, today)
        started = _message_id(key) in history.by_message_id
        if not started:
            # A reminder already begun today is finished (retried or walked to its fallback) whatever
            # the caps say now; it is counted in them already.
            if reminder.kind == "questionnaire" and any(
                    _message_id(_key(patient_id, reminder, today - timedelta(days=d))) in history.by_message_id
                    for d in range(1, reminder.repeat_days)):
                report.recently_reminded += 1
                continue
            if history.count_since(day_start) >= daily_cap or history.count_since(week_start) >= weekly_cap:
                report.capped += 1
                continue
        if quiet_until > now:
            report.deferred += 1
            continue
        request = compose(m, recipient, template=reminder.template, key=key,
                          context={"org_name": m.org_name, "contact_phone": m.contact_phone},
                          about=f"CarePlan/{enrolled[reminder.program]}", patient_ref=patient_ref,
                          channels=None, category=REMINDER_CATEGORY)
        if request is None:
            report.unreachable += 1
            continue
        try:
            outcome = deliver(m.store, m.channels, request, m.clock)
        except TransientDeliveryError:
            # Recorded in `preparation` with its retry time; it counts against the caps from now on.
            report.retrying += 1
            if not started:
                history.times.append(now)
                history.by_message_id[_message_id(key)] = {}
            log.info("reminder %s held back by a transient channel failure", reminder.id)
            continue
        if outcome.status == "sent":
            report.sent += 1
            report.by_reminder[reminder.id] = report.by_reminder.get(reminder.id, 0) + 1
            if not started:
                history.times.append(now)
                history.by_message_id[_message_id(key)] = {}
        elif outcome.status == "already-sent":
            report.already_sent += 1
        else:
            report.not_sent += 1
            log.info("reminder %s not sent on any channel (%s)", reminder.id, outcome.channel or "none")


def _key(patient_id: str, reminder: Reminder, day: date) -> str:
    return f"reminder|{patient_id}|{reminder.id}|{day.isoformat()}"


def _message_id(key: str) -> str:
    # The Communication identifier dispatch derives from a request key.
    return message_id_for(key)


def _history(store: FhirStore, patient_ref: str, since: datetime) -> _History:
    """Reminder Communications touched since `since`. A `completed` one counts at its `sent` time,
    one still in `preparation` (a retry pending, or a crash mid-send) at its last update: it may
    well have reached the patient. `not-done` ones never did and do not count. A fallback chain has
    at most one Communication that is not `not-done`, so each reminder counts once."""
    times: list[datetime] = []
    by_id: dict[str, dict[str, Any]] = {}
    params = {"subject": patient_ref, "category": f"{MESSAGE_CATEGORY_SYSTEM}|{REMINDER_CATEGORY}",
              "_lastUpdated": f"ge{iso(since)}", "_count": "1000"}
    for comm in search_all(store, "Communication", params):
        for ident in comm.get("identifier", []) or []:
            if ident.get("system") == COMMUNICATION_SYSTEM and ident.get("value"):
                by_id[ident["value"]] = comm
        status = comm.get("status")
        if status == "not-done":
            continue
        stamp = comm.get("sent") if status == "completed" else None
        stamp = stamp or (comm.get("meta") or {}).get("lastUpdated")
        try:
            times.append(parse_instant(stamp) if stamp else since)
        except ValueError:
            times.append(since)  # unreadable: count it rather than risk an extra text
    return _History(times, by_id)


def _done(store: FhirStore, patient_ref: str, reminder: Reminder, today: date, tz: ZoneInfo) -> bool:
    if reminder.kind == "reading":
        assert reminder.metric is not None
        start = at_local_time(today, time(0), tz)
        return _any(store, "Observation", {"subject": patient_ref, "code": code_query(reminder.metric),
                                            "date": f"ge{iso(start)}", "status": DONE_OBSERVATION})
    # Questionnaire: answered within the last `every_days` local days (today included).
    assert reminder.instrument is not None
    instrument = INSTRUMENTS[reminder.instrument]
    start = at_local_time(today - timedelta(days=reminder.every_days - 1), time(0), tz)
    if _any(store, "Observation", {"subject": patient_ref, "code": f"{LOINC}|{instrument.total_code}",
                                   "date": f"ge{iso(start)}", "status": DONE_OBSERVATION}):
        return True
    # A response not scored (yet) also counts: the patient did answer.
    for response in search_all(store, "QuestionnaireResponse", {"subject": patient_ref, "authored": f"ge{iso(start)}",
                                                                 "_count": "100"}):
        if response.get("status") not in DONE_RESPONSE:
            continue
        try:
            if identify(response).key == instrument.key:
                return True
        except ScoringError:
            continue
    return False


def _any(store: FhirStore, resource_type: str, params: dict[str, str]) -> bool:
    return bool(store.search(resource_type, {**params, "_count": "1"}).resources)


__all__ = ["ReminderReport", "run_reminder_sweep"]
