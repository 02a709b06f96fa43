"""Readings: the plain records the evaluator works on, and their extraction from FHIR Observations.

A `Reading` is one value of one metric at one effective time, already in the metric's canonical
UCUM unit. One Observation can give several (a BP panel gives systolic and diastolic; a PRO score
gives the total and its item answers); they share the Observation reference.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

from common.clock import parse_instant
from common.codes import ALTERNATE_CODES, LOINC, METRIC_BY_LOINC, METRICS, SCORE_UNIT, UCUM, Metric
from common.units import UnitError, convert, convertible_units

# Only these statuses carry a result a clinician should act on (R4 ObservationStatus).
EVALUATED_STATUSES = frozenset({"final", "amended", "corrected"})


class ReadingError(ValueError):
    """An Observation Vigil cannot turn into readings; the message says which part and why."""


class Reading(NamedTuple):
    """Immutable. A NamedTuple rather than a frozen dataclass: handlers build thousands per event."""

    metric: str  # alias from common.codes.METRICS
    value: float  # in METRICS[metric].unit
    effective: datetime  # timezone-aware, UTC
    ref: str  # "Observation/<id>"
    original_value: float | None = None
    original_unit: str | None = None

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit


def readings_from_observation(obs: dict[str, Any]) -> list[Reading]:
    """Every reading of a known metric in `obs`; [] for a status that is not a result.

    Raises ReadingError for an Observation without id or an offset-aware effective time, or a
    known metric whose value has no unit Vigil can convert to the canonical one.
    """
    if obs.get("resourceType") != "Observation":
        raise ReadingError(f"expected an Observation, got {obs.get('resourceType')!r}")
    if not obs.get("id"):
        raise ReadingError("Observation has no id, so readings could not be referenced")
    ref = f"Observation/{obs['id']}"
    if obs.get("status") not in EVALUATED_STATUSES:
        return []
    effective = _effective(obs, ref)
    parent_codes = _loinc_codes(obs.get("code"))
    out: list[Reading] = []
    seen: set[str] = set()
    parts = [(obs, None), *((c, parent_codes) for c in obs.get("component") or [])]
    for part, parents in parts:
        metric = _metric_of(part.get("code"), parents)
        if metric is None or metric.alias in seen:
            continue
        value = _value(part, metric, ref)
        if value is not None:
            seen.add(metric.alias)
            out.append(Reading(metric.alias, value[0], effective, ref, value[1], value[2]))
    return out


def observation_code_for(metric: str) -> str:
    """The LOINC code to search Observations by to find readings of `metric` (its panel if it is
    a component: BP values live in 85354-9 panels, PRO items in the score Observation)."""
    found = METRICS[metric]
    return found.panel or found.loinc


def _effective(obs: dict[str, Any], ref: str) -> datetime:
    text = obs.get("effectiveDateTime") or obs.get("effectiveInstant")
    period = obs.get("effectivePeriod") or {}
    text = text or period.get("start") or period.get("end")
    if not isinstance(text, str):
        raise ReadingError(f"{ref}: no effectiveDateTime, effectiveInstant or effectivePeriod; windows need it")
    try:
        return parse_instant(text)
    except ValueError:
        raise ReadingError(f"{ref}: effective time {text!r} is not a date-time with a UTC offset") from None


def _loinc_codes(concept: dict[str, Any] | None) -> frozenset[str]:
    return frozenset(c.get("code", "") for c in (concept or {}).get("coding") or [] if c.get("system") == LOINC)


def _metric_of(concept: dict[str, Any] | None, parents: frozenset[str] | None) -> Metric | None:
    for coding in (concept or {}).get("coding") or ():
        if coding.get("system") != LOINC:
            continue
        code = coding.get("code", "")
        metric = METRIC_BY_LOINC.get(code) or METRICS.get(ALTERNATE_CODES.get(code, ""))
        if metric is None:
            continue
        # A questionnaire item belongs to its instrument: PHQ-2 shares PHQ-9's item codes.
        if parents is not None and metric.category == "survey" and metric.panel not in parents:
            continue
        return metric
    return None


def _value(part: dict[str, Any], metric: Metric, ref: str) -> tuple[float, float, str] | None:
    where = f"{ref} {metric.alias} ({metric.loinc})"
    if "valueInteger" in part:
        if metric.unit != SCORE_UNIT:
            raise ReadingError(f"{where}: valueInteger carries no unit; send valueQuantity in {metric.unit}")
        raw, unit = part["valueInteger"], SCORE_UNIT
    elif "valueQuantity" in part:
        quantity = part["valueQuantity"] or {}
        if "value" not in quantity:
            return None
        raw, unit = quantity["value"], _unit(quantity, metric, where)
    elif any(key.startswith("value") for key in part):
        kind = next(key for key in part if key.startswith("value"))
        raise ReadingError(f"{where}: {kind} is not a measurement; expected valueQuantity")
    else:
        return None  # dataAbsentReason, or no value at all: nothing to evaluate
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ReadingError(f"{where}: value is not a finite number")
    try:
        return convert(float(raw), unit, metric.unit), float(raw), unit
    except UnitError:
        valid = ", ".join(convertible_units(metric.unit))
        raise ReadingError(f"{where}: unit {unit!r} cannot be converted to {metric.unit}; accepted: {valid}") from None


def _unit(quantity: dict[str, Any], metric: Metric, where: str) -> str:
    code = quantity.get("code")
    if code and quantity.get("system", UCUM) == UCUM:
        return str(code)
    if metric.unit == SCORE_UNIT and not code and not quantity.get("unit"):
        return SCORE_UNIT
    unit = quantity.get("unit")
    if isinstance(unit, str) and unit in convertible_units(metric.unit):
        return unit  # a human unit text that happens to be the UCUM code
    raise ReadingError(f"{where}: quantity has no UCUM unit code (system {UCUM}); expected {metric.unit}")
