"""The generic Vigil device message → one FHIR R4 Observation.

Message shape: {"deviceId", "patientId", "type", "time", "values": {...}} where patientId is the
logical id of the Patient resource and time is ISO 8601 with a UTC offset. This is the thin
mapping of the foundation; MedTech-compatible templates (ingest/templates) generalize it.

Codes and units: ../shared/reference/clinical.md §1.2-1.3.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from common.clock import iso, parse_instant
from common.codes import (
    BP_PANEL,
    LOINC,
    METRICS,
    OBSERVATION_CATEGORY,
    SPO2_PULSE_OX,
    UCUM,
    Metric,
    vigil_system,
)
from common.units import UnitError, convert
from ingest.errors import IngestError

OBSERVATION_SYSTEM = vigil_system("observation")
DEVICE_SYSTEM = vigil_system("device")


@dataclass(frozen=True)
class _Value:
    """One value field of a message type: which metric it is and the plausible range in the
    canonical unit (values outside are device or transcription errors, not physiology)."""

    field: str
    metric: Metric
    low: float
    high: float
    units: tuple[str, ...]  # accepted units; the first is the default when the message is silent


def _v(field: str, alias: str, low: float, high: float, *extra_units: str) -> _Value:
    metric = METRICS[alias]
    return _Value(field, metric, low, high, (metric.unit, *extra_units))


# type -> value fields; a list of more than one means a panel with components.
TYPES: dict[str, list[_Value]] = {
    "blood_pressure": [_v("systolic", "systolic_bp", 40, 300, "mmHg"), _v("diastolic", "diastolic_bp", 20, 200, "mmHg")],
    "heart_rate": [_v("bpm", "heart_rate", 20, 300, "{beats}/min", "1/min")],
    "spo2": [_v("percent", "spo2", 50, 100)],
    "body_weight": [_v("weight", "body_weight", 1, 500, "[lb_av]", "g")],
    "glucose": [_v("glucose", "glucose", 10, 1000, "mmol/L")],
    "body_temp": [_v("temperature", "body_temp", 25, 45, "[degF]")],
    "resp_rate": [_v("rate", "resp_rate", 2, 80, "{breaths}/min")],
}

# Unit spellings devices send that are not UCUM codes.
_UNIT_ALIASES = {"lb": "[lb_av]", "lbs": "[lb_av]", "mmhg": "mm[Hg]", "bpm": "/min", "c": "Cel", "f": "[degF]",
                 "degf": "[degF]", "degc": "Cel", "mg/dl": "mg/dL", "mmol/l": "mmol/L"}


def observation_id(patient_id: str, device_id: str, type_: str, time_utc: str) -> str:
    """Deterministic id: a replay of the same reading targets the same resource. The patient is
    part of it (as in MedTech's scheme), so a device moved to another patient never overwrites
    the first patient's reading."""
    return hashlib.sha256(f"generic|{patient_id}|{device_id}|{type_}|{time_utc}".encode()).hexdigest()[:64]


def to_observation(message: Any) -> dict[str, Any]:
    """Map one parsed generic message to an Observation dict, or raise IngestError."""
    if not isinstance(message, dict):
        raise IngestError("not_an_object", f"message is a JSON {type(message).__name__}, expected an object")
    for name in ("deviceId", "patientId", "type", "time", "values"):
        if message.get(name) in (None, ""):
            raise IngestError("missing_field", f"required field '{name}' is missing or empty")
    for name in ("deviceId", "patientId", "type", "time"):
        if not isinstance(message[name], str):
            raise IngestError("invalid_value", f"field '{name}' must be a string")
    type_ = message["type"]
    if type_ not in TYPES:
        raise IngestError("unknown_type", f"type '{type_[:40]}' is not one of {', '.join(sorted(TYPES))}")
    values = message["values"]
    if not isinstance(values, dict):
        raise IngestError("invalid_value", "field 'values' must be an object")
    try:
        effective = parse_instant(message["time"])
    except ValueError as exc:
        reason = "naive_timestamp" if "offset" in str(exc) else "invalid_timestamp"
        raise IngestError(reason, f"field 'time' must be ISO 8601 with a UTC offset ({exc.__class__.__name__})") from None
    effective_text = iso(effective)

    fields = TYPES[type_]
    quantities = [(_quantity(values, f, type_)) for f in fields]
    obs_id = observation_id(message["patientId"], message["deviceId"], type_, effective_text)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": obs_id}],
        "status": "final",
        "category": [_category(fields[0].metric.category)],
        "subject": {"reference": f"Patient/{message['patientId']}"},
        "effectiveDateTime": effective_text,
        "device": {"identifier": {"system": DEVICE_SYSTEM, "value": message["deviceId"]}},
    }
    if fields[0].metric.category != "vital-signs":
        del obs["meta"]
    if len(fields) > 1:
        obs["code"] = {"coding": [{"system": LOINC, "code": BP_PANEL[0], "display": BP_PANEL[1]}],
                       "text": "Blood pressure"}
        obs["component"] = [{"code": _code(f.metric), "valueQuantity": q} for f, q in zip(fields, quantities, strict=True)]
    else:
        obs["code"] = _code(fields[0].metric)
        if type_ == "spo2":
            # US Core pulse oximetry carries both codes (clinical.md §1.2).
            obs["code"]["coding"].append({"system": LOINC, "code": SPO2_PULSE_OX[0], "display": SPO2_PULSE_OX[1]})
        obs["valueQuantity"] = quantities[0]
    originals = [q.pop("_original") for q in quantities if "_original" in q]
    if originals:
        obs["note"] = [{"text": "Device reported " + "; ".join(originals)}]
    return obs


def _quantity(values: dict[str, Any], spec: _Value, type_: str) -> dict[str, Any]:
    raw = values.get(spec.field)
    if raw is None and len(TYPES[type_]) == 1:
        raw = values.get("value")
    if raw is None:
        raise IngestError("missing_field", f"'{type_}' needs values.{spec.field}")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise IngestError("invalid_value", f"values.{spec.field} must be a finite number")
    unit = values.get(f"{spec.field}_unit", values.get("unit", spec.units[0]))
    if not isinstance(unit, str):
        raise IngestError("unknown_unit", f"unit of values.{spec.field} must be a string")
    unit = _UNIT_ALIASES.get(unit.lower(), unit) if unit not in spec.units else unit
    if unit not in spec.units:
        raise IngestError(
            "unknown_unit", f"unit '{unit[:20]}' is not accepted for values.{spec.field}; use one of {', '.join(spec.units)}"
        )
    try:
        value = convert(float(raw), unit, spec.metric.unit)
    except UnitError as exc:
        raise IngestError("unknown_unit", str(exc)) from None
    if not spec.low <= value <= spec.high:
        raise IngestError(
            "out_of_range",
            f"values.{spec.field} is outside the plausible range {spec.low:g}-{spec.high:g} {spec.metric.unit}",
        )
    quantity: dict[str, Any] = {
        "value": _round(value, spec.metric.unit),
        "unit": spec.metric.unit_display,
        "system": UCUM,
        "code": spec.metric.unit,
    }
    if unit != spec.metric.unit:
        quantity["_original"] = f"{spec.field} {raw:g} {unit}"
    return quantity


def _round(value: float, unit: str) -> float | int:
    rounded = round(value, 2)
    return int(rounded) if rounded == int(rounded) and unit in ("mm[Hg]", "/min", "%") else rounded


def _code(metric: Metric) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": metric.loinc, "display": metric.display}], "text": metric.display}


def _category(code: str) -> dict[str, Any]:
    return {"coding": [{"system": OBSERVATION_CATEGORY, "code": code}]}
