"""Quantities and durations as care managers write them in rules: `2 [lb_av]`, `140`, `24h`, `7d`.

Comparisons happen in each metric's one canonical UCUM unit (DESIGN §5; UCUM), so a
threshold written in pounds is converted to kg once, not the readings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from common.codes import METRICS
from common.units import UnitError, convert, convert_difference, convertible_units

_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(\S+)?\s*$")
_DURATION = re.compile(r"^\s*(\d+)\s*(min|m|h|d|w)\s*$")
_DURATION_UNITS = {"min": timedelta(minutes=1), "m": timedelta(minutes=1), "h": timedelta(hours=1),
                   "d": timedelta(days=1), "w": timedelta(weeks=1)}
QUANTITY_FORMS = "a number in the metric's unit (140) or a number and a UCUM unit ('2 [lb_av]', '0.9 kg')"
DURATION_FORMS = "a whole number and one of m, h, d, w (for example 90m, 24h, 3d, 2w)"


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str | None = None  # None: already in the canonical unit of whatever metric it is used with

    @classmethod
    def parse(cls, raw: object) -> Quantity:
        """A number or a 'value unit' string; raises ValueError saying which forms are valid."""
        if isinstance(raw, Quantity):
            return raw
        if isinstance(raw, bool):
            raise ValueError(f"expected {QUANTITY_FORMS}, got a boolean")
        if isinstance(raw, int | float):
            return cls(float(raw))
        if isinstance(raw, str):
            match = _QUANTITY.match(raw)
            if match:
                return cls(float(match.group(1)), match.group(2))
        raise ValueError(f"{raw!r} is not a quantity; expected {QUANTITY_FORMS}")

    def in_unit(self, unit: str, *, difference: bool = False) -> float:
        """The value in `unit`; `difference=True` for a change (offset units cancel)."""
        if self.unit is None or self.unit == unit:
            return self.value
        return (convert_difference if difference else convert)(self.value, self.unit, unit)

    def __str__(self) -> str:
        return f"{self.value:g}" if self.unit is None else f"{self.value:g} {self.unit}"


def check_unit(quantity: Quantity, metric: str) -> None:
    """Raise ValueError unless `quantity` can be compared with readings of `metric`."""
    canonical = METRICS[metric].unit
    if quantity.unit is None or quantity.unit == canonical:
        return
    try:
        convert(0.0, quantity.unit, canonical)
    except UnitError:
        valid = ", ".join(convertible_units(canonical))
        raise ValueError(
            f"unit {quantity.unit!r} cannot be compared with {metric} (measured in {canonical}); "
            f"use one of {valid} (UCUM codes are case-sensitive)"
        ) from None


def parse_duration(raw: object) -> timedelta:
    if isinstance(raw, str):
        match = _DURATION.match(raw)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{raw!r} is not a duration; expected {DURATION_FORMS}")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def format_value(value: float, unit: str) -> str:
    """Readable value with its unit, rounded for people (evaluation never uses this text)."""
    shown = f"{value:.2f}".rstrip("0").rstrip(".")
    return shown if unit == "{score}" else f"{shown} {unit}"
