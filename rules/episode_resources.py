"""Pure builders of the FHIR resources of an alert episode (FHIR R4 DetectedIssue, Task, Flag; DESIGN §7).

- DetectedIssue: the alert itself. `status` is `preliminary` while the episode is open and `final`
  once closed; `identifiedPeriod` spans the episode; `implicated` lists the readings; `detail` is
  the explanation (no identifiers, no names); an extension keeps the episode state (count, last
  time the rule held, last notification, counted triggering readings).
- Task (actionable severities): `requested`, focus → DetectedIssue, for → Patient; `businessStatus`
  carries the escalation level, which the escalation sweep advances.
- Flag (lasting states): `active` while the episode is open, `inactive` once it closes.

All three share the episode key as logical id and identifier value (systems `urn:vigil:alert`,
`urn:vigil:alert-task`, `urn:vigil:alert-flag`), so writes are idempotent PUTs or conditional creates.
Closing an episode does not touch its Task: an unacknowledged Task keeps escalating until staff act.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.clock import iso
from common.codes import vigil_system
from common.jsondata import json_copy
from rules.episodes import EPISODE_EXT, MAX_COUNTED, Decision, episode_from_detected_issue, episode_key
from rules.model import Rule
from rules.results import Firing

ALERT_SYSTEM = vigil_system("alert")
TASK_SYSTEM = vigil_system("alert-task")
FLAG_SYSTEM = vigil_system("alert-flag")
RULE_SYSTEM = vigil_system("rule")
ENGINE = {"display": "Vigil rules engine"}
MAX_IMPLICATED = 100
PRIORITY_EXT = "urn:vigil:extension:alert-priority"  # the Task's priority, shown on the alert itself


@dataclass(frozen=True)
class EpisodeResources:
    detected_issue: dict[str, Any]
    task: dict[str, Any] | None
    flag: dict[str, Any] | None


def open_episode(firing: Firing, patient_ref: str, now: datetime) -> EpisodeResources:
    key = episode_key(firing.rule_id, patient_ref, firing.anchor)
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": key,
        "identifier": [{"system": ALERT_SYSTEM, "value": key}],
        "status": "preliminary",
        "code": _rule_code(firing.rule),
        "severity": firing.severity,
        "patient": {"reference": patient_ref},
        "identifiedPeriod": {"start": iso(firing.anchor)},
        "author": dict(ENGINE),
        "detail": firing.explanation(),
    }
    _set_implicated(issue, firing.implicated_refs)
    issue["extension"] = [_state(firing.ruleset, 1, _held(firing), now, list(firing.trigger_refs), _latest(firing)),
                          _priority_ext(firing.rule, firing.severity)]
    task = _task(key, firing.rule, firing.severity, patient_ref, now) if firing.rule.wants_task else None
    flag = _flag(key, firing.rule, patient_ref, firing.anchor) if firing.rule.actions.flag else None
    return EpisodeResources(issue, task, flag)


def update_episode(issue: dict[str, Any], firing: Firing, decision: Decision, now: datetime) -> dict[str, Any]:
    """The DetectedIssue after a repeat firing: count + 1, latest reading, worse severity."""
    episode = episode_from_detected_issue(issue)
    new_refs = [ref for ref in firing.trigger_refs if ref not in episode.counted]
    count = episode.count + (1 if new_refs else 0)
    newer = firing.at >= episode.last_held
    latest = _latest(firing) if newer else episode.latest_ref
    notified = now if decision.notify else episode.last_notified
    out = json_copy(issue)
    out["severity"] = decision.severity or out["severity"]
    refs = [i["reference"] for i in out.get("implicated", [])]
    _set_implicated(out, [*refs, *(r for r in firing.implicated_refs if r not in refs)])
    out["detail"] = f"{firing.explanation()} Fired {count} time(s) in this episode."
    out["extension"] = [e for e in out.get("extension", []) if e.get("url") not in (EPISODE_EXT, PRIORITY_EXT)]
    out["extension"].append(_state(episode.ruleset or firing.ruleset, count, max(episode.last_held, firing.at),
                                   notified, [*episode.counted, *new_refs], latest))
    out["extension"].append(_priority_ext(firing.rule, out["severity"]))
    return out


def close_episode(
    issue: dict[str, Any], now: datetime, reason: str, *, by: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The DetectedIssue closed at `now`: final, period end, and a mitigation saying why and by whom."""
    out = json_copy(issue)
    out["status"] = "final"
    out["identifiedPeriod"] = {**out.get("identifiedPeriod", {}), "end": iso(now)}
    out.setdefault("mitigation", []).append(
        {"action": {"text": reason}, "date": iso(now), "author": by or dict(ENGINE)}
    )
    return out


def close_flag(flag: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = json_copy(flag)
    out["status"] = "inactive"
    out["period"] = {**out.get("period", {}), "end": iso(now)}
    return out


def task_priority(rule: Rule, severity: str) -> str:
    return rule.priority_for(severity)


def _priority_ext(rule: Rule, severity: str) -> dict[str, Any]:
    return {"url": PRIORITY_EXT, "valueCode": task_priority(rule, severity)}


def raise_task_priority(task: dict[str, Any], rule: Rule, severity: str) -> dict[str, Any]:
    """The Task after the episode's severity rose (priority only rises)."""
    order = ["routine", "urgent", "asap", "stat"]
    wanted = task_priority(rule, severity)
    out = json_copy(task)
    if order.index(wanted) > order.index(out.get("priority", "routine")):
        out["priority"] = wanted
    return out


def _rule_code(rule: Rule) -> dict[str, Any]:
    return {"coding": [{"system": RULE_SYSTEM, "code": rule.id, "display": rule.title}], "text": rule.title}


def _task(key: str, rule: Rule, severity: str, patient_ref: str, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": key,
        "identifier": [{"system": TASK_SYSTEM, "value": key}],
        "status": "requested",
        "businessStatus": {"coding": [{"system": vigil_system("escalation-level"), "code": "0"}],
                           "text": "not escalated"},
        "intent": "order",
        "priority": task_priority(rule, severity),
        "code": {"text": "Review alert"},
        "description": rule.title,
        "focus": {"reference": f"DetectedIssue/{key}"},
        "for": {"reference": patient_ref},
        "authoredOn": iso(now),
        "lastModified": iso(now),
        "requester": dict(ENGINE),
    }


def _flag(key: str, rule: Rule, patient_ref: str, start: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": key,
        "identifier": [{"system": FLAG_SYSTEM, "value": key}],
        "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                  "code": "clinical"}]}],
        "code": _rule_code(rule),
        "subject": {"reference": patient_ref},
        "period": {"start": iso(start)},
        "author": dict(ENGINE),
    }


def _state(ruleset: str, count: int, last_held: datetime, notified: datetime | None, counted: list[str],
           latest: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "ruleset", "valueString": ruleset}, {"url": "count", "valueInteger": count},
                                   {"url": "lastHeld", "valueDateTime": iso(last_held)}]
    if notified is not None:
        parts.append({"url": "lastNotified", "valueDateTime": iso(notified)})
    if latest:
        parts.append({"url": "latestReading", "valueReference": {"reference": latest}})
    parts += [{"url": "counted", "valueString": ref} for ref in counted[-MAX_COUNTED:]]
    return {"url": EPISODE_EXT, "extension": parts}


def _set_implicated(issue: dict[str, Any], refs: list[str] | tuple[str, ...]) -> None:
    if refs:
        issue["implicated"] = [{"reference": ref} for ref in list(refs)[-MAX_IMPLICATED:]]


def _held(firing: Firing) -> datetime:
    return firing.at


def _latest(firing: Firing) -> str | None:
    return firing.trigger_refs[0] if firing.trigger_refs else None
