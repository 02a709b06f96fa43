"""Patient reminders: "take your reading", "your questionnaire is due".

The reminder sweep (a timer, every 10 minutes) walks the patients enrolled by an active CarePlan
and, for each reminder of their programs (`notifications/reminders.yaml`) whose time has come in
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

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml

from common.clock import iso, parse_instant
from common.codes import LOINC, METRICS, vigil_system
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from handlers.messaging import Messaging, _request
from handlers.patient_data import codes_for
from notifications.dispatch import COMMUNICATION_SYSTEM, TransientDeliveryError, deliver, message_id_for
from notifications.preferences import at_local_time, patient_recipient, send_at, zone
from rules.enrollment import careplan_active, enrolls
from rules.model import Program, Ruleset
from rules.pro import INSTRUMENTS, ScoringError, identify

log = logging.getLogger(__name__)

SCHEDULE_FILE = Path(__file__).resolve().parent.parent / "notifications" / "reminders.yaml"
REMINDER_CATEGORY = "reminder"
MESSAGE_CATEGORY_SYSTEM = vigil_system("message-category")
# Statuses of a reading or response that count as done (not entered-in-error, not cancelled).
DONE_OBSERVATION = "final,amended,corrected,preliminary"
DONE_RESPONSE = ("completed", "amended")
# TCPA healthcare-message exemption (FCC 15-72): <=1 message a day and <=3 a week per provider.
TCPA_DAILY_CAP = 1
TCPA_WEEKLY_CAP = 3
PROGRAM_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # as rules.model names programs
DEFAULT_TEMPLATES = {"reading": "reminder_reading", "questionnaire": "reminder_questionnaire"}

Kind = Literal["reading", "questionnaire"]


class ReminderConfigError(ValueError):
    """The reminder schedule file is not usable (the message names file, line and field)."""


# -- the schedule ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reminder:
    id: str
    program: str
    kind: Kind
    at: time  # wall-clock time in the patient's zone
    template: str
    metric: str | None = None  # reading reminders
    instrument: str | None = None  # questionnaire reminders: a key of rules.pro.INSTRUMENTS
    every_days: int = 1  # questionnaire: how often a response is wanted
    repeat_days: int = 1  # questionnaire: while overdue, at most one reminder per this many days


@dataclass(frozen=True)
class ProgramReminders:
    program: str
    reminders: tuple[Reminder, ...]
    daily_cap: int
    weekly_cap: int


@dataclass(frozen=True)
class ReminderSchedule:
    programs: Mapping[str, ProgramReminders]
    source: str = "<reminders>"

    def for_programs(self, program_ids: Iterable[str]) -> tuple[list[Reminder], int, int]:
        """The reminders of these programs (earliest first, file order breaking ties) and the
        patient's caps: the lowest of the programs'."""
        wanted = [self.programs[p] for p in program_ids if p in self.programs]
        order = {p: i for i, p in enumerate(self.programs)}
        reminders = sorted((r for pr in wanted for r in pr.reminders),
                           key=lambda r: (r.at, order[r.program], r.id))
        daily = min((pr.daily_cap for pr in wanted), default=0)
        weekly = min((pr.weekly_cap for pr in wanted), default=0)
        return reminders, daily, weekly


def load_schedule(source: Path | str | None = None) -> ReminderSchedule:
    """Parse and validate a schedule file (default `notifications/reminders.yaml`) or YAML text."""
    if source is None or isinstance(source, Path):
        path = source or SCHEDULE_FILE
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReminderConfigError(f"{name}: cannot read the reminder schedule: {exc.strerror}") from None
    else:
        name, text = "<reminders>", source
    return _parse(name, text)


@functools.cache
def default_schedule() -> ReminderSchedule:
    """The shipped schedule, read once per process (on first use, never at import)."""
    return load_schedule(SCHEDULE_FILE)


def _parse(name: str, text: str) -> ReminderSchedule:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReminderConfigError(f"{name}: not valid YAML: {exc}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)

    def fail(path: tuple[Any, ...], message: str) -> ReminderConfigError:
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
        return ReminderConfigError(f"{name}:{lines.get(probe, 1)}: {where or 'top level'}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("programs"), dict) or not data["programs"]:
        raise fail((), "expected a mapping with a non-empty 'programs' mapping")
    _no_unknown(data, {"defaults", "programs"}, (), fail)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise fail(("defaults",), "expected a mapping with daily_cap, weekly_cap")
    _no_unknown(defaults, {"daily_cap", "weekly_cap"}, ("defaults",), fail)
    default_daily = _count(defaults, "daily_cap", TCPA_DAILY_CAP, ("defaults",), fail)
    default_weekly = _count(defaults, "weekly_cap", TCPA_WEEKLY_CAP, ("defaults",), fail)
    programs: dict[str, ProgramReminders] = {}
    seen_ids: dict[str, str] = {}
    for program_id, spec in data["programs"].items():
        base: tuple[Any, ...] = ("programs", program_id)
        if not isinstance(program_id, str) or not PROGRAM_ID.match(program_id):
            raise fail(base, f"program id {program_id!r} must be lowercase letters, digits and '-'")
        if not isinstance(spec, dict):
            raise fail(base, "expected a mapping with 'reminders'")
        _no_unknown(spec, {"reminders", "daily_cap", "weekly_cap"}, base, fail)
        daily = _count(spec, "daily_cap", default_daily, base, fail)
        weekly = _count(spec, "weekly_cap", default_weekly, base, fail)
        if weekly < daily:
            raise fail((*base, "weekly_cap"), f"weekly_cap {weekly} is below daily_cap {daily}")
        raw_reminders = spec.get("reminders")
        if not isinstance(raw_reminders, list) or not raw_reminders:
            raise fail((*base, "reminders"), "a program needs a non-empty list of reminders")
        reminders = []
        for i, raw in enumerate(raw_reminders):
            reminder = _reminder(str(program_id), raw, (*base, "reminders", i), fail)
            if reminder.id in seen_ids:
                raise fail((*base, "reminders", i, "id"),
                           f"reminder id {reminder.id!r} is already used in program {seen_ids[reminder.id]!r}; "
                           "ids name the message key, so they must be unique")
            seen_ids[reminder.id] = str(program_id)
            reminders.append(reminder)
        programs[str(program_id)] = ProgramReminders(str(program_id), tuple(reminders), daily, weekly)
    return ReminderSchedule(programs, name)


def _reminder(program: str, raw: Any, where: tuple[Any, ...], fail: Any) -> Reminder:
    if not isinstance(raw, dict):
        raise fail(where, "expected a mapping with id, kind, at")
    _no_unknown(raw, {"id", "kind", "at", "template", "metric", "instrument", "every_days", "repeat_days"}, where, fail)
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid or "|" in rid:
        raise fail((*where, "id"), "a reminder needs an id (text without '|')")
    kind = raw.get("kind")
    if kind not in DEFAULT_TEMPLATES:
        raise fail((*where, "kind"), f"must be 'reading' or 'questionnaire', not {kind!r}")
    at_text = raw.get("at")
    try:
        # "08:00"; YAML 1.1 reads an unquoted 08:00 as a number, so insist on text.
        if not isinstance(at_text, str):
            raise ValueError
        at = time.fromisoformat(at_text.strip())
    except ValueError:
        raise fail((*where, "at"), f"must be a quoted wall-clock time like \"08:00\", not {at_text!r}") from None
    template = raw.get("template", DEFAULT_TEMPLATES[kind])
    if not isinstance(template, str) or not template:
        raise fail((*where, "template"), "must be a template name")
    if kind == "reading":
        for key in ("instrument", "every_days", "repeat_days"):
            if key in raw:
                raise fail((*where, key), "only questionnaire reminders take this")
        metric = raw.get("metric")
        if metric not in METRICS:
            raise fail((*where, "metric"), f"unknown metric {metric!r} (known: {', '.join(sorted(METRICS))})")
        return Reminder(rid, program, "reading", at, template, metric=metric)
    if "metric" in raw:
        raise fail((*where, "metric"), "questionnaire reminders name an instrument, not a metric")
    instrument = raw.get("instrument")
    if instrument not in INSTRUMENTS:
        raise fail((*where, "instrument"), f"unknown instrument {instrument!r} (known: {', '.join(INSTRUMENTS)})")
    every = _count(raw, "every_days", None, where, fail)
    repeat = _count(raw, "repeat_days", every, where, fail)
    return Reminder(rid, program, "questionnaire", at, template, instrument=instrument, every_days=every,
                    repeat_days=repeat)


def _count(spec: Mapping[str, Any], key: str, default: int | None, where: tuple[Any, ...], fail: Any) -> int:
    value = spec.get(key, default)
    if value is None:
        raise fail(where, f"{key!r} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 366:
        raise fail((*where, key), f"must be a whole number from 1 to 366, not {value!r}")
    return value


def _no_unknown(spec: Mapping[str, Any], allowed: set[str], where: tuple[Any, ...], fail: Any) -> None:
    unknown = set(map(str, spec)) - allowed
    if unknown:
        raise fail(where, f"unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _lines(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, (*path, i), out)


# -- the sweep ---------------------------------------------------------------------------------

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


def run_reminder_sweep(m: Messaging, rulesets: list[Ruleset],
                       schedule: ReminderSchedule | None = None) -> ReminderReport:
    """Send the reminders that are due now; safe to run as often as wanted."""
    schedule = schedule or default_schedule()
    now = m.clock.now()
    report = ReminderReport()
    programs = _programs(schedule, rulesets)
    careplans: dict[str, list[dict[str, Any]]] = {}
    for cp in search_all(m.store, "CarePlan", {"status": "active", "_count": "1000"}):
        ref = (cp.get("subject") or {}).get("reference", "")
        if ref.startswith("Patient/"):
            careplans.setdefault(ref, []).append(cp)
    for patient_ref in sorted(careplans):
        active = [cp for cp in careplans[patient_ref] if careplan_active(cp, now)]
        enrolled = {pid: cp["id"] for pid, program in programs.items()
                    for cp in reversed(active) if enrolls(cp, program)}
        if not enrolled:
            continue
        try:
            _remind_patient(m, schedule, patient_ref, enrolled, now, report)
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


def _remind_patient(m: Messaging, schedule: ReminderSchedule, patient_ref: str, enrolled: dict[str, str],
                    now: datetime, report: ReminderReport) -> None:
    reminders, daily_cap, weekly_cap = schedule.for_programs(enrolled)
    if not reminders:
        return
    report.patients += 1
    try:
        patient = m.store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        log.warning("active CarePlan for a patient the store does not have; no reminders")
        return
    recipient = patient_recipient(patient, m.defaults, now=now)
    tz = zone(recipient.time_zone)
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
        request = _request(m, recipient, template=reminder.template, key=key,
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
        code = ",".join(f"{LOINC}|{c}" for c in codes_for(reminder.metric))
        return _any(store, "Observation", {"subject": patient_ref, "code": code, "date": f"ge{iso(start)}",
                                            "status": DONE_OBSERVATION})
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


__all__ = ["Reminder", "ReminderConfigError", "ReminderReport", "ReminderSchedule", "default_schedule",
           "load_schedule", "run_reminder_sweep"]
