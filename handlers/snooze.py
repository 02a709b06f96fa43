"""Directional snooze: silence one direction of one metric for one patient for a while.

A care-team member snoozes, say, "glucose high" for 4 hours after a known cause (a meal): rules
whose comparisons on glucose all point up (`>`/`>=`) open no episode meanwhile, while the rules
that look down (`<`/`<=`, a hypoglycemia) still alert — a long snooze on highs must never hide a
low (reference: nightscout/nightguard#39). A firing whose routing priority is `stat` (the most
dangerous alerts, docs/rules.md) pages whatever the snooze says. When the snooze ends, the alert
sweep re-checks: the patient's newest reading of the metric goes through the rules again, so a
condition that still holds opens its alert then.

A snooze is a FHIR Flag (category `urn:vigil:flag-category|snooze`, code
`urn:vigil:snooze|<metric>:<direction>`, `period`), one per patient, metric and direction
(deterministic id): snoozing again moves its end. `status` is `active` until the re-check ran.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from common.clock import iso, parse_instant
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from fhirstore.port import FhirStore
from rules.model import Rule

log = logging.getLogger(__name__)

CATEGORY = "urn:vigil:flag-category"
CODE_SYSTEM = "urn:vigil:snooze"
Direction = Literal["high", "low"]
HIGH_OPS = frozenset({">", ">="})
LOW_OPS = frozenset({"<", "<="})
MAX_HOURS = 72


def snooze_id(patient_ref: str, metric: str, direction: str) -> str:
    return "snooze-" + hashlib.sha256(f"{patient_ref}|{metric}|{direction}".encode()).hexdigest()[:32]


def _walk(node: Any) -> Iterable[tuple[str, str]]:
    """(metric, op) of every comparison in a condition tree (reading, aggregate, change, ...)."""
    if isinstance(node, list | tuple):
        for item in node:
            yield from _walk(item)
        return
    fields = getattr(type(node), "model_fields", None)
    if fields is None:
        return
    metric, op = getattr(node, "metric", None), getattr(node, "op", None)
    if isinstance(metric, str) and isinstance(op, str):
        yield metric, op
    for name in fields:
        value = getattr(node, name, None)
        if value is not None and not isinstance(value, str | int | float | bool):
            yield from _walk(value)


def rule_directions(rule: Rule) -> set[tuple[str, Direction]]:
    out: set[tuple[str, Direction]] = set()
    for cond in [rule.when, *[t.when for t in rule.more_severe]]:
        for metric, op in _walk(cond):
            if op in HIGH_OPS:
                out.add((metric, "high"))
            elif op in LOW_OPS:
                out.add((metric, "low"))
    return out


def snooze(store: FhirStore, patient_ref: str, metric: str, direction: str, hours: float, now: datetime,
           by: str) -> dict[str, Any]:
    if direction not in ("high", "low"):
        raise ValueError("direction: 'high' or 'low'")
    if not 0 < hours <= MAX_HOURS:
        raise ValueError(f"hours: more than 0, at most {MAX_HOURS}")
    flag = {
        "resourceType": "Flag",
        "id": snooze_id(patient_ref, metric, direction),
        "status": "active",
        "category": [{"coding": [{"system": CATEGORY, "code": "snooze"}]}],
        "code": {"coding": [{"system": CODE_SYSTEM, "code": f"{metric}:{direction}"}],
                 "text": f"{metric} {direction} snoozed"},
        "subject": {"reference": patient_ref},
        "period": {"start": iso(now), "end": iso(now + timedelta(hours=hours))},
        "author": {"reference": by},
    }
    return store.update(flag).resource or flag


def active_snooze(store: FhirStore, patient_ref: str, rule: Rule, severity: str, now: datetime) -> str | None:
    """Why a firing of `rule` is silenced now ("glucose high snoozed until ..."), or None."""
    if rule.priority_for(severity) == "stat":
        return None  # the most dangerous alerts page through any snooze
    directions = rule_directions(rule)
    for metric, direction in directions:
        opposite = "low" if direction == "high" else "high"
        if (metric, opposite) in directions:
            continue  # a rule that also looks the other way is never silenced by one direction
        try:
            flag = store.read("Flag", snooze_id(patient_ref, metric, direction))
        except (ResourceNotFound, ResourceGone):
            continue
        end = (flag.get("period") or {}).get("end")
        if flag.get("status") == "active" and end and now < parse_instant(end):
            return f"{metric} {direction} snoozed until {end}"
    return None


def expired_snoozes(store: FhirStore, now: datetime) -> list[dict[str, Any]]:
    flags = search_all(store, "Flag", {"category": f"{CATEGORY}|snooze", "status": "active"})
    return [f for f in flags if (e := (f.get("period") or {}).get("end")) and parse_instant(e) <= now]


def newest_observation(store: FhirStore, patient_ref: str, metric: str) -> dict[str, Any] | None:
    """The patient's newest Observation carrying `metric` (as its code or a component's)."""
    from handlers.patient_data import code_query

    found = store.search("Observation", {"subject": patient_ref, "combo-code": code_query(metric), "_sort": "-date",
                                         "_count": "1"})
    return found.resources[0] if found.resources else None


def recheck_expired(store: FhirStore, now: datetime, evaluate: Any, newest: Any) -> int:
    """End every snooze whose time is up and run the newest reading of its metric through the
    rules again (`evaluate(observation)`; `newest(patient_ref, metric)` finds it). Returns how many."""
    done = 0
    for flag in expired_snoozes(store, now):
        metric = next((c.get("code", "") for c in flag["code"]["coding"] if c.get("system") == CODE_SYSTEM), "")
        metric = metric.split(":", 1)[0]
        patient_ref = flag["subject"]["reference"]
        obs = newest(patient_ref, metric)
        if obs is not None:
            evaluate(obs)
        flag["status"] = "inactive"
        store.update(flag, if_match=flag["meta"]["versionId"])
        done += 1
    if done:
        log.info("re-checked %d ended snoozes", done)
    return done
