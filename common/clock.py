"""The `Clock` port: the core asks it for "now" instead of reading the system clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock for tests and simulations: it only moves when told to."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = at.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._now = at.astimezone(UTC)


class ResumedClock:
    """Time that resumes from `start` and then runs at the wall clock's pace: a data directory
    recorded "as of" a past instant (the demo) continues from there, so everything that would
    have come due in the gap does not come due at once."""

    def __init__(self, start: datetime, wall: Clock | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("ResumedClock needs a timezone-aware datetime")
        self._wall = wall or SystemClock()
        self._offset = start.astimezone(UTC) - self._wall.now()

    def now(self) -> datetime:
        return self._wall.now() + self._offset


def iso(dt: datetime) -> str:
    """FHIR instant text for a timezone-aware datetime, in UTC with a Z suffix."""
    if dt.tzinfo is None:
        raise ValueError("refusing to format a datetime without a timezone")
    text = dt.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant that carries an offset; an offset-less time is an error."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 is past the last instant a datetime holds
        raise ValueError(f"timestamp {text[:40]!r} is out of the range of dates Vigil can hold") from None
