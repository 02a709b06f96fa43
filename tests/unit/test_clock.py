from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.clock import FixedClock, ResumedClock, parse_instant


def test_an_instant_past_the_last_datetime_is_a_value_error_not_an_overflow() -> None:
    with pytest.raises(ValueError, match="out of the range"):
        parse_instant("9999-12-31T23:59:59-23:59")
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_instant("2026-11-20T07:00:00")
    assert parse_instant("2026-11-20T07:00:00-05:00") == datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_a_resumed_clock_starts_at_its_instant_and_runs_with_the_wall_clock() -> None:
    wall = FixedClock(datetime(2026, 12, 2, 6, 0, tzinfo=UTC))
    resumed = ResumedClock(datetime(2026, 11, 15, 18, 0, tzinfo=UTC), wall=wall)
    assert resumed.now() == datetime(2026, 11, 15, 18, 0, tzinfo=UTC)
    wall.advance(timedelta(minutes=20))
    assert resumed.now() == datetime(2026, 11, 15, 18, 20, tzinfo=UTC)
