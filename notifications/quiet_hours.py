"""Quiet hours and wall-clock time in a recipient's IANA time zone.

Quiet hours are wall-clock times in the recipient's zone (DESIGN §5: calendar concepts in the
patient's zone). `next_allowed_send` is DST-correct: the end of quiet hours on a 23- or 25-hour
day is found by wall time, and a wall time that does not exist (skipped by a spring-forward) maps
to the moment the clocks jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class PreferenceError(ValueError):
    """A preference value Vigil cannot use (the message says which and why)."""


@dataclass(frozen=True)
class QuietHours:
    """Wall-clock window in the recipient's zone when non-urgent messages wait. `start > end`
    wraps midnight (21:00–08:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """"21:00-08:00" → QuietHours; "none" or "" → None."""
        if text is None or text.strip().lower() in ("", "none", "off"):
            return None
        try:
            start_text, end_text = (p.strip() for p in text.split("-"))
            return cls(time.fromisoformat(start_text), time.fromisoformat(end_text))
        except ValueError:
            raise PreferenceError(f"quiet hours {text!r} must look like '21:00-08:00' or 'none'") from None

    def contains(self, t: time) -> bool:
        t = t.replace(tzinfo=None)
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


# 8 a.m.–9 p.m. recipient time is the window cited for calls to residences (FCC 15-72).
DEFAULT_QUIET_HOURS = QuietHours(time(21, 0), time(8, 0))


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise PreferenceError(f"{name!r} is not an IANA time zone (like 'America/New_York')") from None



def at_local_time(day: date, at: time, tz: str | ZoneInfo) -> datetime:
    """The UTC instant when the wall clock in `tz` first shows `at` on `day`.

    An ambiguous wall time (the repeated hour of a fall-back) is its first occurrence; a wall time
    skipped by a spring-forward is the moment the clocks jump past it.
    """
    zinfo = tz if isinstance(tz, ZoneInfo) else zone(tz)
    naive = datetime.combine(day, at.replace(tzinfo=None))
    first = naive.replace(tzinfo=zinfo, fold=0)
    if first.astimezone(UTC).astimezone(zinfo).replace(tzinfo=None) == naive:
        return first.astimezone(UTC)
    # In the gap: fold=1 lands before it, fold=0 after it. The jump lies between; bisect on seconds.
    ends = sorted(int(naive.replace(tzinfo=zinfo, fold=f).astimezone(UTC).timestamp()) for f in (0, 1))
    lo, hi = ends

    def wall(ts: int) -> datetime:
        return datetime.fromtimestamp(ts, UTC).astimezone(zinfo).replace(tzinfo=None)

    while hi - lo > 1:
        mid = (lo + hi) // 2
        if wall(mid) >= naive:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def next_allowed_send(now: datetime, tz: str | ZoneInfo, quiet: QuietHours | None) -> datetime:
    """`now` outside quiet hours; otherwise when quiet hours end, by the recipient's wall clock."""
    if now.tzinfo is None:
        raise ValueError("next_allowed_send needs a timezone-aware 'now'")
    if quiet is None:
        return now
    zinfo = tz if isinstance(tz, ZoneInfo) else zone(tz)
    local = now.astimezone(zinfo)
    if not quiet.contains(local.time()):
        return now
    day = local.date()
    if quiet.start > quiet.end and local.time() >= quiet.start:
        day += timedelta(days=1)  # quiet began this evening: it ends tomorrow morning
    return max(now, at_local_time(day, quiet.end, zinfo))
