"""Values outside a plausible physiological range are device or transcription errors, not readings.

They are dead-lettered (`out_of_range`) rather than stored and alerted on. Ranges are in each
metric's canonical unit (common/codes.py); they are wide on purpose: they catch a 2000 bpm heart
rate or a weight in grams sent as kilograms, not unusual patients.
"""

from __future__ import annotations

from typing import Any

from common.codes import LOINC, METRIC_BY_LOINC, UCUM
from common.units import UnitError, convert
from ingest.templates.errors import MappingFailure

OUT_OF_RANGE = "out_of_range"

RANGES: dict[str, tuple[float, float]] = {
    "systolic_bp": (40, 300),
    "diastolic_bp": (20, 200),
    "heart_rate": (20, 300),
    "resp_rate": (2, 80),
    "spo2": (50, 100),
    "body_temp": (25, 45),
    "body_weight": (1, 500),
    "body_height": (30, 250),
    "glucose": (10, 1000),
}


def check_observation(obs: dict[str, Any]) -> None:
    """Raise MappingFailure(out_of_range) naming the code and the range, never the value."""
    for part in (obs, *obs.get("component", [])):
        quantity = part.get("valueQuantity")
        if not quantity or not isinstance(quantity.get("value"), int | float):
            continue
        for coding in (part.get("code") or {}).get("coding", []):
            metric = METRIC_BY_LOINC.get(coding.get("code", "")) if coding.get("system") == LOINC else None
            if metric is None or metric.alias not in RANGES:
                continue
            unit = quantity.get("code") if quantity.get("system") == UCUM else None
            try:
                value = convert(float(quantity["value"]), unit or metric.unit, metric.unit)
            except UnitError:
                continue  # the template engine already rejects units that do not fit the code
            low, high = RANGES[metric.alias]
            if not low <= value <= high:
                raise MappingFailure(
                    OUT_OF_RANGE,
                    f"{metric.alias} (LOINC {metric.loinc}) is outside the plausible range "
                    f"{low:g}-{high:g} {metric.unit}",
                )
