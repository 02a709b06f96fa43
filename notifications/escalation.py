"""Escalation: a pure state machine that runs a chain (`notifications.escalation_chains`) over the
episode's `Task` dict.

All state lives on the Task (DESIGN §7; nothing in memory, so a timer sweep on any instance can
advance it):
- `Task.status` `requested` while the chain runs; `accepted` once acknowledged;
- `Task.businessStatus` the level (`urn:vigil:escalation-level` code `level-<n>`, or `exhausted`,
  `acknowledged`, `closed`);
- extensions `urn:vigil:escalation-chain` (chain id), `urn:vigil:escalation-due` (when the sweep
  should act next) and `urn:vigil:escalation-repeat` (repeats of the last level done);
- an identifier `urn:vigil:ack-code`: the short code a clinician texts back to acknowledge by SMS
  (`notifications.ack_codes`).

`advance()` and `acknowledge()` never write anything: they return the Task to persist. The caller
writes it with `If-Match` on the version it read, so of two sweeps racing on one Task only one
wins, and sends the step's messages with keys built from `Step.notify_key` (deterministic, so a
replayed step sends nothing twice).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from common.clock import iso, parse_instant
from common.codes import vigil_system
from common.jsondata import json_copy
from notifications.escalation_chains import Chain, EscalationError, Level

LEVEL_SYSTEM = vigil_system("escalation-level")
CHAIN_EXT = vigil_system("escalation-chain")
DUE_EXT = vigil_system("escalation-due")
REPEAT_EXT = vigil_system("escalation-repeat")
ACK_AT_EXT = vigil_system("acknowledged-at")
MITIGATION_SYSTEM = vigil_system("mitigation")
OPEN_STATUSES = frozenset({"requested", "received", "ready"})
_REF = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")


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


# -- reading and writing the Task --------------------------------------------------------------

def _ext(task: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    return next((e for e in task.get("extension", []) or [] if e.get("url") == url), None)


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
            code = coding.get("code")
            return code if isinstance(code, str) else None
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


