"""Small builders shared by the rules tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from rules.enrollment import PatientContext
from rules.loader import parse_ruleset
from rules.model import Ruleset
from rules.readings import Reading

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
PATIENT = "Patient/p1"


def at(hours: float = 0.0) -> datetime:
    return T0 + timedelta(hours=hours)


def reading(metric: str, value: float, hours: float = 0.0, ref: str | None = None) -> Reading:
    return Reading(metric, float(value), at(hours), ref or f"Observation/{metric}-{hours:g}")


def observation(hours: float, ref: str | None = None, **values: float) -> list[Reading]:
    """The readings of one Observation (e.g. systolic_bp=150, diastolic_bp=90)."""
    ref = ref or f"Observation/obs-{hours:g}"
    return [Reading(metric, float(v), at(hours), ref) for metric, v in values.items()]


def ruleset(*rules: dict[str, Any], ruleset_id: str = "test") -> Ruleset:
    """A ruleset from rule mappings; each gets title and severity defaults."""
    full = [{"title": r["id"], "severity": "moderate", **r} for r in rules]
    doc = {"ruleset": ruleset_id, "title": "Test", "program": {"id": ruleset_id, "category": [ruleset_id]},
           "rules": full}
    return parse_ruleset(yaml.safe_dump(doc, sort_keys=False), f"{ruleset_id}.yaml")


def one_rule(when: dict[str, Any] | str, **extra: Any) -> Ruleset:
    return ruleset({"id": "r1", "when": when, **extra})


def context(**kwargs: Any) -> PatientContext:
    return PatientContext(kwargs.pop("patient_ref", PATIENT), **kwargs)


def goal(metric_loinc: str, *, high: tuple[float, str] | None = None, low: tuple[float, str] | None = None,
         comparator: str | None = None, status: str = "active", goal_id: str = "g1",
         start: str | None = None) -> dict[str, Any]:
    def q(pair: tuple[float, str]) -> dict[str, Any]:
        return {"value": pair[0], "system": "http://unitsofmeasure.org", "code": pair[1], "unit": pair[1]}

    target: dict[str, Any] = {"measure": {"coding": [{"system": "http://loinc.org", "code": metric_loinc}]}}
    if comparator:
        target["detailQuantity"] = {**q(high or low), "comparator": comparator}  # type: ignore[arg-type]
    else:
        target["detailRange"] = {k: q(v) for k, v in (("low", low), ("high", high)) if v}
    out = {"resourceType": "Goal", "id": goal_id, "lifecycleStatus": status, "description": {"text": "target"},
           "subject": {"reference": PATIENT}, "target": [target]}
    if start:
        out["startDate"] = start
    return out
