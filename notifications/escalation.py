"""Escalation chains: YAML definitions and a pure state machine over the episode's `Task` dict.

A chain is levels of (roles to notify, channel kinds in order, how long to wait for an
acknowledgement), and what to do when the last level has waited in vain:

    chains:
      crisis:
        levels:
          - {notify: [nurse], channels: [sms, email], wait: 15m}
          - {notify: [physician], channels: [sms], wait: 15m}
          - {notify: [on-call], channels: [sms, email], wait: 30m}
        on_exhausted: {action: repeat-last, times: 2, notify: [care-manager]}

All state lives on the Task (DESIGN §7; nothing in memory, so a timer sweep on any instance can
advance it):
- `Task.status` `requested` while the chain runs; `accepted` once acknowledged;
- `Task.businessStatus` the level (`urn:vigil:escalation-level` code `level-<n>`, or `exhausted`,
  `acknowledged`, `closed`);
- extensions `urn:vigil:escalation-chain` (chain id), `urn:vigil:escalation-due` (when the sweep
  should act next) and `urn:vigil:escalation-repeat` (repeats of the last level done);
- an identifier `urn:vigil:ack-code`: the short code a clinician texts back (`ACK <code>`) to
  acknowledge by SMS (`ack_code_from_mac`, `with_ack_code`; `Task?identifier=` finds the Task).

`advance()` and `acknowledge()` never write anything: they return the Task to persist. The caller
writes it with `If-Match` on the version it read, so of two sweeps racing on one Task only one
wins, and sends the step's messages with keys built from `Step.notify_key` (deterministic, so a
replayed step sends nothing twice).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from common.clock import iso, parse_instant
from common.codes import vigil_system
from common.jsondata import json_copy

LEVEL_SYSTEM = vigil_system("escalation-level")
CHAIN_EXT = vigil_system("escalation-chain")
DUE_EXT = vigil_system("escalation-due")
REPEAT_EXT = vigil_system("escalation-repeat")
ACK_AT_EXT = vigil_system("acknowledged-at")
MITIGATION_SYSTEM = vigil_system("mitigation")
ACK_CODE_SYSTEM = vigil_system("ack-code")
# Letters and digits a person reads off a phone and types back without doubt: no 0/O, 1/I/L, 2/Z,
# 5/S, 8/B. 26^6 is about 3e8 codes, so two open alerts rarely share one (and the sender's care
# team tells them apart when they do).
ACK_CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY346789"
ACK_CODE_LENGTH = 6
OPEN_STATUSES = frozenset({"requested", "received", "ready"})
CHANNEL_KINDS = frozenset({"sms", "email"})
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_REF = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")


class EscalationError(ValueError):
    """A chain definition or a Task Vigil cannot use; the message says where and why."""


@dataclass(frozen=True)
class Level:
    number: int  # 1-based
    roles: tuple[str, ...]
    channels: tuple[str, ...]
    wait: timedelta
    template: str = "escalation"


@dataclass(frozen=True)
class OnExhausted:
    action: Literal["stop", "repeat-last"] = "stop"
    times: int = 0  # repeats of the last level, for repeat-last
    notify: tuple[str, ...] = ()  # roles told once that nobody acknowledged
    channels: tuple[str, ...] = ("sms", "email")


@dataclass(frozen=True)
class Chain:
    id: str
    levels: tuple[Level, ...]
    on_exhausted: OnExhausted = OnExhausted()
    description: str = ""


@dataclass(frozen=True)
class Step:
    """What the sweep should do now for one Task.

    action: notify (send to `roles` on `channels`, persist `task`), wait (nothing until `due`),
    exhausted (the chain ran out: persist `task`; tell `roles`, if any), done (acknowledged or
    closed: nothing more).
    """

    action: Literal["notify", "wait", "exhausted", "done"]
    task: dict[str, Any]
    level: int | None = None
    roles: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    template: str | None = None
    due: datetime | None = None
    notify_key: str | None = None
    changed: bool = False


@dataclass(frozen=True)
class Acknowledgement:
    task: dict[str, Any]
    changed: bool  # False: already acknowledged or closed; nothing to write
    late: bool = False  # the chain had already run out when the acknowledgement came
    mitigation: dict[str, Any] | None = None  # the DetectedIssue.mitigation entry to add
    previous_owner: str | None = None  # who acknowledged first, when this one was a second


# -- loading ---------------------------------------------------------------------------------

def parse_duration(value: Any, where: str) -> timedelta:
    """"15m", "1h", "30s", "2d" or ISO 8601 "PT15M"; positive."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise EscalationError(f"{where}: give a unit, e.g. '{value}m' (s, m, h, d)")
    text = str(value or "").strip()
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"s": timedelta(seconds=amount), "m": timedelta(minutes=amount), "h": timedelta(hours=amount),
                 "d": timedelta(days=amount)}[unit]
    else:
        iso_match = _ISO_DURATION.match(text)
        if not iso_match or text in ("P", "PT"):
            raise EscalationError(f"{where}: {value!r} is not a duration like '15m', '2h' or 'PT15M'")
        d, h, m, s = (int(g) if g else 0 for g in iso_match.groups())
        delta = timedelta(days=d, hours=h, minutes=m, seconds=s)
    if delta <= timedelta(0):
        raise EscalationError(f"{where}: the wait must be longer than zero")
    return delta


def _lines(node: yaml.Node, path: tuple[Any, ...] = (), out: dict | None = None) -> dict[tuple[Any, ...], int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _lines(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, (*path, i), out)
    return out


def _fmt(path: tuple[Any, ...]) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def load_chains(source: str | Path, *, known_roles: Iterable[str] | None = None) -> dict[str, Chain]:
    """Chains from a YAML file (or YAML text). Errors name the file, line and field."""
    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        name, text = str(path), path.read_text(encoding="utf-8")
    else:
        name, text = "<chains>", str(source)
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EscalationError(f"{name}: not valid YAML: {exc}") from None
    lines = _lines(node) if node is not None else {}
    roles = set(known_roles) if known_roles is not None else None

    def fail(path: tuple[Any, ...], message: str) -> EscalationError:
        probe = path
        while probe not in lines and probe:
            probe = probe[:-1]
        return EscalationError(f"{name}:{lines.get(probe, 1)}: {_fmt(path) or 'top level'}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("chains"), dict) or not data["chains"]:
        raise fail((), "expected a mapping with a non-empty 'chains' mapping")
    unknown_top = set(data) - {"chains"}
    if unknown_top:
        raise fail((), f"unknown key(s) {', '.join(sorted(map(str, unknown_top)))}")
    chains: dict[str, Chain] = {}
    for chain_id, spec in data["chains"].items():
        base = ("chains", chain_id)
        if not isinstance(spec, dict):
            raise fail(base, "expected a mapping with 'levels'")
        unknown = set(spec) - {"levels", "on_exhausted", "description"}
        if unknown:
            raise fail(base, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        raw_levels = spec.get("levels")
        if not isinstance(raw_levels, list) or not raw_levels:
            raise fail((*base, "levels"), "a chain needs at least one level")
        levels = []
        for i, raw in enumerate(raw_levels):
            where: tuple[Any, ...] = (*base, "levels", i)
            if not isinstance(raw, dict):
                raise fail(where, "expected a mapping with notify, channels, wait")
            unknown = set(raw) - {"notify", "channels", "wait", "template"}
            if unknown:
                raise fail(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
            level_roles = _roles(raw.get("notify"), (*where, "notify"), roles, fail)
            channels = _channels(raw.get("channels", ["sms", "email"]), (*where, "channels"), fail)
            if "wait" not in raw:
                raise fail(where, "'wait' is required (how long to wait for an acknowledgement)")
            try:
                wait = parse_duration(raw["wait"], _fmt((*where, "wait")))
            except EscalationError as exc:
                raise fail((*where, "wait"), str(exc).split(": ", 1)[-1]) from None
            levels.append(Level(i + 1, level_roles, channels, wait, str(raw.get("template", "escalation"))))
        raw_ex = spec.get("on_exhausted") or {}
        where = (*base, "on_exhausted")
        if not isinstance(raw_ex, dict):
            raise fail(where, "expected a mapping with action (stop | repeat-last), times, notify")
        unknown = set(raw_ex) - {"action", "times", "notify", "channels"}
        if unknown:
            raise fail(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        action = raw_ex.get("action", "stop")
        if action not in ("stop", "repeat-last"):
            raise fail((*where, "action"), f"must be 'stop' or 'repeat-last', not {action!r}")
        times = raw_ex.get("times", 1 if action == "repeat-last" else 0)
        if not isinstance(times, int) or isinstance(times, bool) or times < 0 or times > 100:
            raise fail((*where, "times"), "must be a whole number from 0 to 100")
        if action == "stop" and times:
            raise fail((*where, "times"), "only 'repeat-last' repeats")
        notify = _roles(raw_ex.get("notify", []), (*where, "notify"), roles, fail, allow_empty=True)
        ex_channels = _channels(raw_ex.get("channels", ["sms", "email"]), (*where, "channels"), fail)
        chains[str(chain_id)] = Chain(str(chain_id), tuple(levels), OnExhausted(action, times, notify, ex_channels),
                                      str(spec.get("description", "")))
    return chains


def _roles(
    value: Any, where: tuple[Any, ...], known: set[str] | None, fail, allow_empty: bool = False
) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise fail(where, "list the care-team roles to notify, e.g. [nurse]")
    for role in value:
        if not isinstance(role, str) or not role:
            raise fail(where, "roles are names like nurse, physician, on-call")
        if known is not None and role not in known:
            raise fail(where, f"unknown role {role!r} (known: {', '.join(sorted(known))})")
    return tuple(value)


def _channels(value: Any, where: tuple[Any, ...], fail) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise fail(where, "list channel kinds in order of preference, e.g. [sms, email]")
    bad = [c for c in value if c not in CHANNEL_KINDS]
    if bad:
        raise fail(where, f"unknown channel kind(s) {', '.join(map(str, bad))} (use sms, email)")
    return tuple(value)


# -- reading and writing the Task --------------------------------------------------------------

def _ext(task: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    return next((e for e in task.get("extension", []) or [] if e.get("url") == url), None)


def ack_code_from_mac(mac: bytes) -> str:
    """The acknowledgement code for a Task, from a MAC over its id (deterministic: a re-run of the
    same step texts the same code; keyed: codes cannot be worked out from Task ids)."""
    if len(mac) < 8:
        raise EscalationError("an acknowledgement code needs at least 8 bytes of MAC")
    number = int.from_bytes(mac, "big")
    chars = []
    for _ in range(ACK_CODE_LENGTH):
        number, index = divmod(number, len(ACK_CODE_ALPHABET))
        chars.append(ACK_CODE_ALPHABET[index])
    return "".join(chars)


def normalize_ack_code(text: str | None) -> str | None:
    """The code as Vigil stores it (upper case, no spaces or dashes), or None when `text` cannot be
    one. People type codes in any case and sometimes split them ("k7m-x3q")."""
    if not text:
        return None
    code = re.sub(r"[\s\-]", "", text).upper()
    if len(code) != ACK_CODE_LENGTH or any(c not in ACK_CODE_ALPHABET for c in code):
        return None
    return code


def ack_code_of(task: Mapping[str, Any]) -> str | None:
    for ident in task.get("identifier", []) or []:
        if ident.get("system") == ACK_CODE_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def with_ack_code(task: Mapping[str, Any], code: str) -> tuple[dict[str, Any], bool]:
    """The Task carrying `code` as its `urn:vigil:ack-code` identifier (returns changed). A Task
    that already has a code keeps it: messages already sent quote that one."""
    if normalize_ack_code(code) != code:
        raise EscalationError(f"{code!r} is not an acknowledgement code ({ACK_CODE_LENGTH} of {ACK_CODE_ALPHABET})")
    if ack_code_of(task) is not None:
        return dict(task), False
    updated = dict(task)
    updated["identifier"] = [*(task.get("identifier", []) or []), {"system": ACK_CODE_SYSTEM, "value": code}]
    return updated, True


def with_chain(task: Mapping[str, Any], chain_id: str) -> tuple[dict[str, Any], bool]:
    """The Task naming its chain before the first notice goes out (returns changed), so the sweep
    finds and restarts a chain whose first step a channel failure held back."""
    current = chain_of(task)
    if current is not None:
        if current != chain_id:
            raise EscalationError(f"the Task runs chain {current!r}, not {chain_id!r}")
        return dict(task), False
    updated = dict(task)
    updated["extension"] = [*(task.get("extension", []) or []), {"url": CHAIN_EXT, "valueString": chain_id}]
    return updated, True


def is_open(task: Mapping[str, Any]) -> bool:
    """Still waiting for an acknowledgement (running or exhausted, not acknowledged or closed)."""
    return task.get("status") in OPEN_STATUSES and _business(task) not in ("acknowledged", "closed")


def acknowledged_at(task: Mapping[str, Any]) -> datetime | None:
    ext = _ext(task, ACK_AT_EXT)
    return parse_instant(ext["valueDateTime"]) if ext and ext.get("valueDateTime") else None


def chain_of(task: Mapping[str, Any]) -> str | None:
    ext = _ext(task, CHAIN_EXT)
    return ext.get("valueString") if ext else None


def level_of(task: Mapping[str, Any]) -> int:
    """The level last notified (0: not started)."""
    for coding in (task.get("businessStatus") or {}).get("coding", []) or []:
        if coding.get("system") == LEVEL_SYSTEM and str(coding.get("code", "")).startswith("level-"):
            try:
                return int(coding["code"][len("level-"):])
            except ValueError:
                break
    ext = _ext(task, vigil_system("escalation-last-level"))
    return int(ext["valueInteger"]) if ext else 0


def due_of(task: Mapping[str, Any]) -> datetime | None:
    ext = _ext(task, DUE_EXT)
    return parse_instant(ext["valueDateTime"]) if ext and ext.get("valueDateTime") else None


def repeats_of(task: Mapping[str, Any]) -> int:
    ext = _ext(task, REPEAT_EXT)
    return int(ext["valueInteger"]) if ext else 0


def is_due(task: Mapping[str, Any], now: datetime) -> bool:
    """Cheap pre-filter for a sweep: an open, running Task that is not started yet or is past due."""
    if task.get("status") not in OPEN_STATUSES or _business(task) in ("exhausted", "acknowledged", "closed"):
        return False
    if level_of(task) == 0:
        return True
    due = due_of(task)
    return due is not None and due <= now


def _business(task: Mapping[str, Any]) -> str | None:
    for coding in (task.get("businessStatus") or {}).get("coding", []) or []:
        if coding.get("system") == LEVEL_SYSTEM:
            return coding.get("code")
    return None


def _with_state(task: Mapping[str, Any], chain: Chain, *, code: str, text: str, due: datetime | None,
                repeats: int, last_level: int, now: datetime) -> dict[str, Any]:
    updated = dict(task)  # top-level keys are replaced, never mutated: the caller's Task stays as it was
    managed = {CHAIN_EXT, DUE_EXT, REPEAT_EXT, vigil_system("escalation-last-level")}
    ext = [e for e in updated.get("extension", []) or [] if e.get("url") not in managed]
    ext.append({"url": CHAIN_EXT, "valueString": chain.id})
    ext.append({"url": vigil_system("escalation-last-level"), "valueInteger": last_level})
    if due is not None:
        ext.append({"url": DUE_EXT, "valueDateTime": iso(due)})
    if repeats:
        ext.append({"url": REPEAT_EXT, "valueInteger": repeats})
    updated["extension"] = ext
    updated["businessStatus"] = {"coding": [{"system": LEVEL_SYSTEM, "code": code}], "text": text}
    updated["lastModified"] = iso(now)
    return updated


def _key(task: Mapping[str, Any], level: int, repeat: int) -> str:
    tid = task.get("id") or next((i.get("value") for i in task.get("identifier", []) or []), None)
    if not tid:
        raise EscalationError("the Task has neither an id nor an identifier to key its messages on")
    return f"{tid}|escalation|level-{level}|r{repeat}"


# -- the state machine -----------------------------------------------------------------------

def advance(task: Mapping[str, Any], chain: Chain, now: datetime) -> Step:
    """The next step for an escalation Task at `now` (pure: returns the Task to persist)."""
    if now.tzinfo is None:
        raise EscalationError("advance needs a timezone-aware 'now'")
    current_chain = chain_of(task)
    if current_chain is not None and current_chain != chain.id:
        raise EscalationError(f"the Task runs chain {current_chain!r}, not {chain.id!r}")
    frozen = dict(task)
    if task.get("status") not in OPEN_STATUSES or _business(task) in ("acknowledged", "closed"):
        return Step("done", frozen)
    if _business(task) == "exhausted":
        return Step("done", frozen)
    level = level_of(task)
    n = len(chain.levels)
    if level == 0:
        return _notify(task, chain, chain.levels[0], 0, now)
    due = due_of(task)
    if due is not None and now < due:
        return Step("wait", frozen, level=level, due=due)
    if level < n:
        return _notify(task, chain, chain.levels[level], 0, now)
    repeats = repeats_of(task)
    ex = chain.on_exhausted
    if ex.action == "repeat-last" and repeats < ex.times:
        return _notify(task, chain, chain.levels[-1], repeats + 1, now)
    updated = _with_state(task, chain, code="exhausted", text=f"escalation exhausted after level {n}",
                          due=None, repeats=repeats, last_level=n, now=now)
    return Step("exhausted", updated, level=n, roles=ex.notify, channels=ex.channels if ex.notify else (),
                template="escalation" if ex.notify else None,
                notify_key=_key(task, n + 1, 0) if ex.notify else None, changed=True)


def _notify(task: Mapping[str, Any], chain: Chain, level: Level, repeat: int, now: datetime) -> Step:
    due = now + level.wait  # from when the notice actually went out, even if the sweep ran late
    n = len(chain.levels)
    text = f"escalation level {level.number} of {n}" + (f", repeat {repeat}" if repeat else "")
    updated = _with_state(task, chain, code=f"level-{level.number}", text=text, due=due, repeats=repeat,
                          last_level=level.number, now=now)
    return Step("notify", updated, level=level.number, roles=level.roles, channels=level.channels,
                template=level.template, due=due, notify_key=_key(task, level.number, repeat), changed=True)


def acknowledge(task: Mapping[str, Any], who: str, when: datetime) -> Acknowledgement:
    """Stop the chain: the Task is `accepted`, owned by `who`, with the time; a second or late
    acknowledgement changes nothing and is reported as such (harmless)."""
    if not _REF.match(who or ""):
        raise EscalationError(
            "the acknowledging clinician must be a Practitioner/<id> or PractitionerRole/<id> reference"
        )
    if when.tzinfo is None:
        raise EscalationError("acknowledge needs a timezone-aware time")
    status = task.get("status")
    if status not in OPEN_STATUSES or _business(task) in ("acknowledged", "closed"):
        owner = (task.get("owner") or {}).get("reference")
        return Acknowledgement(dict(task), changed=False, previous_owner=owner)
    late = _business(task) == "exhausted"
    updated = dict(task)
    updated["status"] = "accepted"
    updated["owner"] = {"reference": who}
    updated["businessStatus"] = {"coding": [{"system": LEVEL_SYSTEM, "code": "acknowledged"}],
                                 "text": f"acknowledged at level {level_of(task)}"}
    updated["lastModified"] = iso(when)
    updated["extension"] = [e for e in updated.get("extension", []) or [] if e.get("url") not in (DUE_EXT, ACK_AT_EXT)]
    updated["extension"].append({"url": ACK_AT_EXT, "valueDateTime": iso(when)})
    return Acknowledgement(updated, changed=True, late=late, mitigation=mitigation_entry(who, when))


def mitigation_entry(who: str, when: datetime) -> dict[str, Any]:
    return {
        "action": {
            "coding": [
                {"system": MITIGATION_SYSTEM, "code": "acknowledged", "display": "Alert acknowledged by clinician"}
            ],
            "text": "Alert acknowledged",
        },
        "date": iso(when),
        "author": {"reference": who},
    }


def add_mitigation(detected_issue: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The DetectedIssue with `entry` appended, unless an equal entry is there (returns changed)."""
    existing = list(detected_issue.get("mitigation", []) or [])
    if any(m == entry for m in existing):
        return dict(detected_issue), False
    updated = json_copy(dict(detected_issue))
    updated["mitigation"] = [*existing, json_copy(dict(entry))]
    return updated, True


def sweep(tasks: Iterable[Mapping[str, Any]], chains: Mapping[str, Chain], now: datetime,
          default_chain: str | None = None) -> list[Step]:
    """Steps that need action (notify / exhausted) for a batch of Tasks; waits and done are left out."""
    out = []
    for task in tasks:
        if not is_due(task, now):
            continue
        chain_id = chain_of(task) or default_chain
        if chain_id is None:
            continue  # not an escalation Task
        chain = chains.get(chain_id)
        if chain is None:
            raise EscalationError(f"Task {task.get('id')}: no escalation chain named {chain_id!r}")
        step = advance(task, chain, now)
        if step.action in ("notify", "exhausted"):
            out.append(step)
    return out
