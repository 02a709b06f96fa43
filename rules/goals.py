"""Personal bounds from the patient's active Goals (FHIR R4 Goal.target; docs/rules.md §3).

`Goal.target.measure` names the LOINC code; the bound comes from `detailRange` (low/high, each
optional: a missing low means any value at or below high meets the goal, and the reverse) or from
`detailQuantity` (comparator `<`/`<=` gives a high bound, `>`/`>=` a low bound; a strict comparator
means the bound value itself is outside the goal; without a comparator the quantity is the
target itself and serves as whichever bound the rule asks for). Only `lifecycleStatus = active`
Goals count. When several active Goals target one measure, the one started last wins (ties: the
greatest id), because the latest decision of the care team is the one to honour.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.codes import ALTERNATE_CODES, LOINC, METRICS, UCUM
from common.units import UnitError, convert
from rules.quantity import format_value

HIGH_COMPARATORS = {"<": True, "<=": False}  # comparator -> strict
LOW_COMPARATORS = {">": True, ">=": False}


@dataclass(frozen=True, slots=True)
class PersonalBound:
    metric: str
    bound: str  # high | low
    value: float  # canonical unit of the metric
    strict: bool  # the goal excludes the bound value itself (comparator < or >)
    goal_ref: str | None  # "Goal/<id>", for the record; never shown in explanation text
    detail: str  # identifier-free description of where the bound came from


def personal_bound(goals: Iterable[dict[str, Any]], metric: str, bound: str) -> PersonalBound | None:
    """The `bound` ("high" or "low") for `metric` from the active goals, or None."""
    found: list[tuple[str, str, PersonalBound]] = []
    for goal in goals:
        if goal.get("resourceType") != "Goal" or goal.get("lifecycleStatus") != "active":
            continue
        for target in goal.get("target") or []:
            if _measures(target, metric):
                candidate = _bound_of(target, metric, bound, goal)
                if candidate is not None:
                    started = str(goal.get("startDate") or goal.get("statusDate") or "")
                    found.append((started, str(goal.get("id", "")), candidate))
    return max(found, key=lambda f: (f[0], f[1]))[2] if found else None


def _measures(target: dict[str, Any], metric: str) -> bool:
    for coding in (target.get("measure") or {}).get("coding") or []:
        if coding.get("system") == LOINC:
            code = coding.get("code", "")
            if code == METRICS[metric].loinc or ALTERNATE_CODES.get(code) == metric:
                return True
    return False


def _bound_of(target: dict[str, Any], metric: str, bound: str, goal: dict[str, Any]) -> PersonalBound | None:
    ref = f"Goal/{goal['id']}" if goal.get("id") else None
    if "detailRange" in target:
        quantity = (target["detailRange"] or {}).get(bound)
        value = _canonical(quantity, metric)
        if value is None:
            return None
        text = f"active goal range {bound} {format_value(value, METRICS[metric].unit)}"
        return PersonalBound(metric, bound, value, False, ref, text)
    if "detailQuantity" in target:
        quantity = target["detailQuantity"] or {}
        comparator = quantity.get("comparator")
        table = HIGH_COMPARATORS if bound == "high" else LOW_COMPARATORS
        if comparator is not None and comparator not in table:
            return None
        value = _canonical(quantity, metric)
        if value is None:
            return None
        shown = format_value(value, METRICS[metric].unit)
        text = f"active goal {comparator} {shown}" if comparator else f"active goal target {shown} (as {bound} bound)"
        return PersonalBound(metric, bound, value, table.get(comparator or "", False), ref, text)
    if "detailInteger" in target:
        value = float(target["detailInteger"])
        return PersonalBound(metric, bound, value, False, ref, f"active goal target {value:g} (as {bound} bound)")
    return None  # string, CodeableConcept, boolean or Ratio targets are not machine-comparable


def _canonical(quantity: dict[str, Any] | None, metric: str) -> float | None:
    if not quantity or not isinstance(quantity.get("value"), int | float) or isinstance(quantity.get("value"), bool):
        return None
    canonical = METRICS[metric].unit
    unit = quantity.get("code") if quantity.get("system", UCUM) == UCUM else None
    unit = unit or quantity.get("unit") or (canonical if canonical == "{score}" else None)
    if unit is None:
        return None  # a bare number could be pounds or kilograms: not guessed
    try:
        return convert(float(quantity["value"]), unit, canonical)
    except UnitError:
        return None  # a goal in a unit we cannot read is ignored; the rule default applies
