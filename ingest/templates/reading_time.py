"""A reading dated in the future is a device clock error, not a reading.

A device whose clock is wrong (a reset to a default date, a wrong year, an offset applied twice)
can send readings dated months ahead. Stored, they would sit in every window of the rules until
that date and hold off absence alerts. A reading whose time is more than `max_skew` after the
message arrived (`Measurement.ingestion_time`, else the clock) is dead-lettered as
`future_reading`; the skew is the `VIGIL_MAX_FUTURE_SKEW_S` setting (docs/rules.md §2, "Reading
times"). Readings from the past are accepted however old: a scale that syncs weeks at once is
normal, and the rules judge each reading as of the time it was taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from ingest.templates.errors import MappingFailure
from ingest.templates.measurement import Measurement

FUTURE_READING = "future_reading"
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=15)


def check_reading_times(measurements: Iterable[Measurement], now: datetime,
                        max_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW) -> None:
    """Raise MappingFailure(future_reading) if any measurement is dated beyond `max_skew` after its
    arrival. The detail says how far ahead, never the date itself (a date of service is PHI)."""
    worst: timedelta | None = None
    for m in measurements:
        ahead = m.occurrence_time - (m.ingestion_time or now)
        if ahead > max_skew and (worst is None or ahead > worst):
            worst = ahead
    if worst is not None:
        raise MappingFailure(FUTURE_READING, f"the reading is dated {_span(worst)} after it arrived (more than "
                             f"the allowed clock skew of {_span(max_skew)}, VIGIL_MAX_FUTURE_SKEW_S); "
                             "check the device's clock and time zone, then replay")


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{n} {unit}" for n, unit in ((days, "day(s)"), (hours, "hour(s)"), (minutes, "minute(s)")) if n]
    return " ".join(parts) or f"{seconds} second(s)"
