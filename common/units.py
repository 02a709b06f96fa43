"""UCUM unit conversion to the canonical unit of each metric.

Factors: UCUM, https://ucum.org, and NIST SP 811. `[degF]`/`Cel` carry an offset, so they are not a
plain factor. Glucose mass/molar uses 18.016 (glucose MW 180.16 g/mol / 10), documented there.
"""

from __future__ import annotations

from collections.abc import Callable

LB_TO_KG = 0.45359237  # exact, UCUM [lb_av] = 453.59237 g
GLUCOSE_MG_DL_PER_MMOL_L = 18.016

_CONVERTERS: dict[tuple[str, str], Callable[[float], float]] = {
    ("[lb_av]", "kg"): lambda v: v * LB_TO_KG,
    ("kg", "[lb_av]"): lambda v: v / LB_TO_KG,
    ("g", "kg"): lambda v: v / 1000.0,
    ("kg", "g"): lambda v: v * 1000.0,
    ("[degF]", "Cel"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("Cel", "[degF]"): lambda v: v * 9.0 / 5.0 + 32.0,
    ("mmol/L", "mg/dL"): lambda v: v * GLUCOSE_MG_DL_PER_MMOL_L,
    ("mg/dL", "mmol/L"): lambda v: v / GLUCOSE_MG_DL_PER_MMOL_L,
    ("[in_i]", "cm"): lambda v: v * 2.54,
    ("cm", "[in_i]"): lambda v: v / 2.54,
    ("m", "cm"): lambda v: v * 100.0,
    ("{beats}/min", "/min"): lambda v: v,
    ("{breaths}/min", "/min"): lambda v: v,
    ("1/min", "/min"): lambda v: v,
    ("mmHg", "mm[Hg]"): lambda v: v,
    # Durations (sleep stages are reported in seconds or minutes by vendors).
    ("s", "min"): lambda v: v / 60.0,
    ("min", "s"): lambda v: v * 60.0,
    ("h", "min"): lambda v: v * 60.0,
    ("min", "h"): lambda v: v / 60.0,
    ("s", "h"): lambda v: v / 3600.0,
    ("ms", "s"): lambda v: v / 1000.0,
    # A fraction (UCUM unity "1", e.g. SpO2 0.97) and a percentage.
    ("1", "%"): lambda v: v * 100.0,
    ("%", "1"): lambda v: v / 100.0,
    ("[lb_av]", "g"): lambda v: v * LB_TO_KG * 1000.0,
    ("g", "[lb_av]"): lambda v: v / (LB_TO_KG * 1000.0),
}


class UnitError(ValueError):
    """A unit Vigil does not know how to bring to the canonical unit."""


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert `value` from one UCUM code to another; UCUM codes are case-sensitive."""
    if from_unit == to_unit:
        return value
    try:
        return _CONVERTERS[(from_unit, to_unit)](value)
    except KeyError:
        raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}") from None


def can_convert(from_unit: str, to_unit: str) -> bool:
    return from_unit == to_unit or (from_unit, to_unit) in _CONVERTERS


def convertible_units(to_unit: str) -> tuple[str, ...]:
    """Every unit Vigil can bring to `to_unit`, that unit first (for "use one of ..." messages)."""
    return (to_unit, *sorted(src for src, dst in _CONVERTERS if dst == to_unit))


def convert_difference(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a difference of two values (a rise of 2 [lb_av], 1 [degF]), not a value on the scale:
    for offset units such as [degF]/Cel the offset cancels, so only the factor applies."""
    return convert(value, from_unit, to_unit) - convert(0.0, from_unit, to_unit)
