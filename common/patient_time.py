"""A patient's time zone and their calendar days: the one reading of both for rules, messages and reports.

DESIGN §5: clinical windows use effective time; calendar-day concepts (reminders, quiet hours,
"days with readings") are judged in the patient's own zone. Rule windows, quiet hours, reminders,
backtest weeks and billing-day counts all call these functions, so a patient's zone cannot be read
one way by the rules and another by the messages.

Accepted forms, first match wins, each `valueCode` an IANA zone name:
- `http://hl7.org/fhir/StructureDefinition/timezone` — FHIR's resource-level extension;
- `http://hl7.org/fhir/StructureDefinition/tz-code` — FHIR's element-level extension (some systems
  put it on the Patient itself);
- `urn:vigil:time-zone` — Vigil's own.
An extension whose value is not a known zone is skipped (with a warning that names no patient) and
the next form, then the default, is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

TIME_ZONE_EXTS = (
    "http://hl7.org/fhir/StructureDefinition/timezone",
    "http://hl7.org/fhir/StructureDefinition/tz-code",
    "urn:vigil:time-zone",
)


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return None


def patient_time_zone_name(resource: Mapping[str, Any] | None, default: str = "UTC") -> str:
    """The IANA zone name a Patient (or Practitioner) resource records, else `default`."""
    extensions = [e for e in (resource or {}).get("extension") or [] if isinstance(e, Mapping)]
    for url in TIME_ZONE_EXTS:
        for ext in extensions:
            if ext.get("url") != url:
                continue
            if _zone(ext.get("valueCode")) is not None:
                return str(ext["valueCode"])
            log.warning("a %s extension holds an unknown time zone; trying the next form, then %s",
                        url.rsplit("/", 1)[-1], default)
    return default


def patient_time_zone(resource: Mapping[str, Any] | None, default: str = "UTC") -> ZoneInfo:
    """The patient's zone as a `ZoneInfo` (see `patient_time_zone_name`)."""
    zone = _zone(patient_time_zone_name(resource, default))
    if zone is None:
        raise ValueError(f"{default!r} is not an IANA time zone (like 'America/New_York')")
    return zone


def local_day(at: datetime, tz: tzinfo) -> date:
    """The calendar date `at` falls on by the patient's wall clock."""
    if at.tzinfo is None:
        raise ValueError("local_day needs a timezone-aware time")
    return at.astimezone(tz).date()


def days_with_readings(times: Iterable[datetime], tz: tzinfo, *, first: date | None = None,
                       last: date | None = None) -> list[date]:
    """The distinct calendar days (patient's zone) with at least one reading, sorted, optionally
    limited to `first`..`last` inclusive. Counting days, not readings, is how CMS device-supply
    codes count (16 of 30 days for 99454, 2-15 for 99445)."""
    days = {local_day(t, tz) for t in times}
    return sorted(d for d in days if (first is None or d >= first) and (last is None or d <= last))
