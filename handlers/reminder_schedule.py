"""The reminder schedule: which reminders each program sends, when, and the patient's caps.

`notifications/reminders.yaml` (or a file like it) names, per program, reading reminders (a metric
at a wall-clock time in the patient's zone) and questionnaire reminders (an instrument of
`rules.pro`, how often a response is wanted, how often to remind while it is overdue), and the caps
per local day and per rolling 7 local days (TCPA healthcare-message exemption, FCC 15-72). Errors
name the file, line and field. `handlers.reminders` runs the schedule; the composition root
(`runtime.bootstrap`) reads it once, from `VIGIL_REMINDERS_FILE`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, Literal

import yaml

from common.codes import METRICS
from rules.pro import INSTRUMENTS

SCHEDULE_FILE = Path(__file__).resolve().parent.parent / "notifications" / "reminders.yaml"
# TCPA healthcare-message exemption (FCC 15-72): <=1 message a day and <=3 a week per provider.
TCPA_DAILY_CAP = 1
TCPA_WEEKLY_CAP = 3
PROGRAM_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # as rules.model names programs
DEFAULT_TEMPLATES = {"reading": "reminder_reading", "questionnaire": "reminder_questionnaire"}

Kind = Literal["reading", "questionnaire"]


class ReminderConfigError(ValueError):
    """The reminder schedule file is not usable (the message names file, line and field)."""


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
