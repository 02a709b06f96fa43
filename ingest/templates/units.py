"""Units: what a device template says a value is in, and bringing it to the Observation's unit.

A device template value may declare the unit the device sends (`"unit": "[lb_av]"`), or read it
from the message (`"unitExpression": "$.matchedToken.unit"`). Devices and vendor APIs spell units
loosely ("lbs", "mg/dl", "°F", "bpm"); `to_ucum` maps the spellings Vigil knows to UCUM codes and
rejects anything else, so an unexpected unit is a dead letter rather than a wrong number.

The FHIR side decides the target unit (`target_unit`): the Quantity template's own UCUM code when
it has one, else the canonical unit of the Observation's LOINC code (common/codes.py,
UCUM, https://ucum.org, and NIST SP 811), else what the template's unit text means in UCUM. Glucose
is decided by the code: 41653-7 (mass) keeps mg/dL, 15074-8 (molar) keeps mmol/L, so a mmol/L
reading sent to a mass code is converted instead of being read as severe hypoglycaemia.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common import units as common_units
from common.codes import CANONICAL_UNIT_BY_LOINC, LOINC, UCUM
from ingest.templates.errors import UNKNOWN_UNIT, MappingFailure

ORIGINAL_VALUE_URL = "urn:vigil:extension:device-value"
"""Extension on a converted `valueQuantity` holding the value and unit exactly as the device sent
them (DESIGN §5: keep the original value and unit in the stored Observation)."""

# UCUM codes Vigil accepts as-is (case-sensitive, as UCUM is).
UCUM_CODES = frozenset(
    {
        "kg", "g", "[lb_av]", "Cel", "[degF]", "mg/dL", "mmol/L", "mm[Hg]", "/min", "%", "1",
        "cm", "m", "[in_i]", "/d", "{steps}", "h", "min", "s", "ms", "kcal", "L", "L/min",
        "kg/m2", "{score}",
    }
)

# Loose spellings seen in vendor payloads -> UCUM. Looked up case-insensitively.
_ALIASES: dict[str, str] = {
    "kg": "kg", "kgs": "kg", "kilogram": "kg", "kilograms": "kg",
    "g": "g", "gram": "g", "grams": "g",
    "lb": "[lb_av]", "lbs": "[lb_av]", "pound": "[lb_av]", "pounds": "[lb_av]", "[lb_av]": "[lb_av]",
    "cel": "Cel", "degc": "Cel", "°c": "Cel", "c": "Cel", "celsius": "Cel",
    "degf": "[degF]", "°f": "[degF]", "f": "[degF]", "fahrenheit": "[degF]", "[degf]": "[degF]",
    "mg/dl": "mg/dL", "mmol/l": "mmol/L",
    "mmhg": "mm[Hg]", "mm[hg]": "mm[Hg]",
    "bpm": "/min", "beats/min": "/min", "beats/minute": "/min", "count/min": "/min", "/min": "/min",
    "1/min": "/min", "{beats}/min": "/min", "breaths/min": "/min", "breaths/minute": "/min",
    "{breaths}/min": "/min", "min-1": "/min",
    "%": "%", "percent": "%",
    "cm": "cm", "m": "m", "in": "[in_i]", "inch": "[in_i]", "inches": "[in_i]", "[in_i]": "[in_i]",
    "h": "h", "hr": "h", "hour": "h", "hours": "h",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "s": "s", "sec": "s", "second": "s", "seconds": "s", "ms": "ms",
    "kcal": "kcal", "cal": "kcal",
    "/d": "/d", "steps/day": "/d", "{steps}": "{steps}", "steps": "{steps}",
}


def to_ucum(raw: Any) -> str:
    """The UCUM code for a unit as a device or template spells it. Unknown -> MappingFailure."""
    if not isinstance(raw, str) or not raw.strip():
        raise MappingFailure(UNKNOWN_UNIT, "the unit is empty or not a string")
    text = raw.strip()
    if text in UCUM_CODES:
        return text
    code = _ALIASES.get(text.lower())
    if code is None:
        raise MappingFailure(UNKNOWN_UNIT, f"unknown unit {text!r}: Vigil knows {', '.join(sorted(UCUM_CODES))}")
    return code


def is_known_unit(raw: Any) -> bool:
    try:
        to_ucum(raw)
    except MappingFailure:
        return False
    return True


def canonical_unit(codings: Iterable[dict[str, Any]]) -> str | None:
    """The canonical UCUM unit of the first LOINC coding Vigil has one for."""
    for coding in codings:
        if coding.get("system") == LOINC:
            unit = CANONICAL_UNIT_BY_LOINC.get(coding.get("code") or "")
            if unit:
                return unit
    return None


def target_unit(
    template_unit: str | None, template_code: str | None, template_system: str | None,
    codings: Iterable[dict[str, Any]],
) -> str | None:
    """The UCUM code a Quantity should be written in (see the module docstring for the order)."""
    if template_code and template_system in (None, "", UCUM) and template_code in UCUM_CODES:
        return template_code
    canonical = canonical_unit(codings)
    if canonical:
        return canonical
    if template_unit and is_known_unit(template_unit):
        return to_ucum(template_unit)
    return None


def convert(value: float, source: str, target: str) -> float:
    """Convert between UCUM codes; a pair Vigil cannot convert is a MappingFailure (unknown_unit)."""
    try:
        converted = common_units.convert(value, source, target)
    except common_units.UnitError:
        raise MappingFailure(
            UNKNOWN_UNIT, f"cannot convert {source!r} to {target!r} (the unit does not fit the code)"
        ) from None
    # Six significant digits: conversion factors are exact to more than that, and it keeps
    # float noise (98.6 degF -> 37.00000000000001 Cel) out of stored Observations.
    return float(f"{converted:.6g}")


def can_convert(source: str, target: str) -> bool:
    return common_units.can_convert(source, target)


def original_value_extension(value: float | int, raw_unit: str, ucum_code: str) -> dict[str, Any]:
    return {
        "url": ORIGINAL_VALUE_URL,
        "valueQuantity": {"value": value, "unit": raw_unit, "system": UCUM, "code": ucum_code},
    }
