"""A patient's readings by metric, ordered by EFFECTIVE time, and the windows rules look through.

Arrival order never matters here: a scale that syncs a week at once, or a re-delivered event, gives
the same series. Windows are closed intervals [start, at] ending at the evaluation time; readings
after `at` are invisible to it, so a late reading is judged as of its own time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from functools import lru_cache
from operator import attrgetter

from rules.readings import Reading

_ORDER = attrgetter("effective", "ref")
_TIME = attrgetter("effective")


class Series:
    """One metric's readings sorted by (effective time, reference). Lookups bisect on effective time."""

    __slots__ = ("readings",)

    def __init__(self, readings: Iterable[Reading]) -> None:
        self.readings: tuple[Reading, ...] = tuple(sorted(readings, key=_ORDER))

    def __len__(self) -> int:
        return len(self.readings)

    def between(self, start: datetime, end: datetime) -> Sequence[Reading]:
        """Readings with start <= effective <= end."""
        return self.readings[bisect_left(self.readings, start, key=_TIME):bisect_right(self.readings, end, key=_TIME)]

    def last_before(self, at: datetime) -> Reading | None:
        """The latest reading strictly before `at`."""
        i = bisect_left(self.readings, at, key=_TIME)
        return self.readings[i - 1] if i else None

    def up_to(self, at: datetime, n: int) -> Sequence[Reading]:
        """The last `n` readings at or before `at`, oldest first."""
        hi = bisect_right(self.readings, at, key=_TIME)
        return self.readings[max(0, hi - n):hi]

    def after(self, at: datetime, until: datetime) -> Sequence[Reading]:
        """Readings with at < effective <= until."""
        if not self.readings or self.readings[-1].effective <= at:
            return ()
        return self.readings[bisect_right(self.readings, at, key=_TIME):bisect_right(self.readings, until, key=_TIME)]


_EMPTY = Series(())


class History:
    """All readings of one patient the handler loaded for an evaluation, grouped by metric.

    `latest` readings (normally the triggering Observation's) replace any reading of the same
    Observation and metric: the event names the version to act on, the store may hold another.
    """

    __slots__ = ("_series", "latest")

    def __init__(self, readings: Iterable[Reading], latest: Iterable[Reading] = ()) -> None:
        grouped: dict[str, dict[str, Reading]] = {}
        for reading in readings:
            grouped.setdefault(reading.metric, {})[reading.ref] = reading
        for reading in latest:
            grouped.setdefault(reading.metric, {})[reading.ref] = reading
        self._series = {metric: Series(items.values()) for metric, items in grouped.items()}
        self.latest: datetime | None = max((s.readings[-1].effective for s in self._series.values() if s.readings),
                                           default=None)

    def series(self, metric: str) -> Series:
        return self._series.get(metric, _EMPTY)

    def metrics(self) -> frozenset[str]:
        return frozenset(self._series)

    def with_latest(self, latest: Sequence[Reading]) -> History:
        """This history with `latest` replacing same-Observation readings (cheap when nothing changes)."""
        if all(self._contains(r) for r in latest):
            return self
        return History((r for s in self._series.values() for r in s.readings), latest)

    def _contains(self, reading: Reading) -> bool:
        series = self.series(reading.metric)
        i = bisect_left(series.readings, reading.effective, key=_TIME)
        while i < len(series) and series.readings[i].effective == reading.effective:
            if series.readings[i] == reading:
                return True
            i += 1
        return False


def window_start(at: datetime, *, within: timedelta | None, days: int | None, tz: tzinfo = UTC) -> datetime:
    """Start of the window ending at `at`: rolling (`within`) or calendar days in the patient's zone.

    `days: N` means local midnight N days before the local date of `at`: `days: 0` is "today so
    far", `days: 1` "since yesterday began".
    """
    if within is not None:
        return at - within
    if days is None:
        raise ValueError("a window needs `within` or `days`")
    return _calendar_start(at, days, tz)


@lru_cache(maxsize=1024)
def _calendar_start(at: datetime, days: int, tz: tzinfo) -> datetime:
    local_day = at.astimezone(tz).date() - timedelta(days=days)
    return datetime.combine(local_day, time(0), tzinfo=tz).astimezone(UTC)
