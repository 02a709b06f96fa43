"""FHIRPath ``lowBoundary()`` / ``highBoundary()`` (FHIRPath 3.0, "Math" and "Date/DateTime/Time" boundaries).

A value stands for every value that rounds to it at its precision: ``1.0`` for [0.95, 1.05], ``1970-06`` for
June 1970. Without a time zone the widest offsets bound a dateTime (+14:00 low, -12:00 high), as the spec says.
"""

from __future__ import annotations

import calendar
import re
from decimal import Decimal
from typing import Any

from fhirpathpy.engine.nodes import FP_DateTime, FP_Time, ResourceNode

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")


def _kind_and_text(item: Any) -> tuple[str | None, Any]:
    if isinstance(item, ResourceNode):
        kind = item.path if isinstance(item.path, str) else None
        data = item.data
        if kind and "." in kind:
            kind = None  # a path like "Patient.birthDate": decide by the value's shape below
        if isinstance(data, str):
            if kind in ("date", "dateTime", "instant", "time"):
                return kind, data
            return _guess(data), data
        return ("decimal" if isinstance(data, (int, float, Decimal)) and not isinstance(data, bool) else None), data
    if isinstance(item, FP_Time):
        return "time", str(item.asStr)
    if isinstance(item, FP_DateTime):
        text = str(item.asStr).lstrip("@")
        return ("dateTime" if "T" in text else "date"), text
    if isinstance(item, (int, float, Decimal)) and not isinstance(item, bool):
        return "decimal", item
    if isinstance(item, str):
        return _guess(item), item
    return None, item


def _guess(text: str) -> str | None:
    if _DATE.match(text):
        return "date"
    if _DATETIME.match(text):
        return "dateTime"
    if _TIME.match(text):
        return "time"
    return None


def _decimal(value: Any, precision: int | None, high: bool) -> float | None:
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    exponent = dec.as_tuple().exponent
    if not isinstance(exponent, int):
        return None  # NaN or Infinity (exponent "n", "N" or "F"): no boundary, an empty result
    digits = -exponent if exponent < 0 else 0
    half = Decimal(5) * Decimal(10) ** (-(digits + 1))
    bound = dec + half if high else dec - half
    if precision is not None:
        bound = bound.quantize(Decimal(10) ** -precision)
    return float(bound)


def _date_parts(year: str, month: str | None, day: str | None, high: bool) -> str:
    m = int(month) if month else (12 if high else 1)
    d = int(day) if day else calendar.monthrange(int(year), m)[1] if high else 1
    return f"{year}-{m:02d}-{d:02d}"


def _time_parts(h: str | None, mi: str | None, s: str | None, frac: str | None, high: bool) -> str:
    hour = h if h is not None else ("23" if high else "00")
    minute = mi if mi is not None else ("59" if high else "00")
    sec = s if s is not None else ("59" if high else "00")
    frac = ("999" if high else "000") if frac is None else (frac + ("9" if high else "0") * 3)[:3]
    return f"{hour}:{minute}:{sec}.{frac}"


def _boundary(item: Any, precision: int | None, high: bool) -> Any:
    kind, value = _kind_and_text(item)
    if kind == "decimal":
        return _decimal(value, precision, high)
    if not isinstance(value, str):
        return None
    if kind == "date":
        m = _DATE.match(value)
        return _date_parts(m.group(1), m.group(2), m.group(3), high) if m else None
    if kind in ("dateTime", "instant"):
        m = _DATETIME.match(value)
        if not m:
            return None
        year, month, day, hour, minute, sec, frac, tz = m.groups()
        date = _date_parts(year, month, day, high)
        time = _time_parts(hour, minute, sec, frac, high)
        zone = tz or ("-12:00" if high else "+14:00")
        return f"{date}T{time}{zone}"
    if kind == "time":
        m = _TIME.match(value)
        if not m:
            return None
        hour, minute, sec, frac = m.groups()
        return _time_parts(hour, minute, sec, frac, high)
    return None


def low_boundary(item: Any, precision: int | None = None) -> Any:
    return _boundary(item, precision, high=False)


def high_boundary(item: Any, precision: int | None = None) -> Any:
    return _boundary(item, precision, high=True)
