"""Quiet hours across DST, in the patient's zone (the server runs in UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from notifications.quiet_hours import PreferenceError, QuietHours, at_local_time, next_allowed_send

QUIET = QuietHours(time(21), time(8))
LA, NY, MADRID = "America/Los_Angeles", "America/New_York", "Europe/Madrid"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_outside_quiet_hours_sends_now() -> None:
    now = utc(2026, 3, 7, 20, 0)  # 12:00 PST
    assert next_allowed_send(now, LA, QUIET) == now


def test_evening_before_spring_forward_waits_for_8am_daylight_time() -> None:
    # Sat 7 Mar 2026 21:30 PST; clocks go 02:00 -> 03:00 on Sun 8 Mar. 08:00 PDT = 15:00Z (not 16:00Z).
    assert next_allowed_send(utc(2026, 3, 8, 5, 30), LA, QUIET) == utc(2026, 3, 8, 15, 0)
    # Early morning after the change: 07:59 PDT waits one minute.
    assert next_allowed_send(utc(2026, 3, 8, 14, 59), LA, QUIET) == utc(2026, 3, 8, 15, 0)


def test_evening_before_fall_back_waits_for_8am_standard_time() -> None:
    # Sat 31 Oct 2026 21:30 PDT; clocks go 02:00 -> 01:00 on Sun 1 Nov. 08:00 PST = 16:00Z.
    assert next_allowed_send(utc(2026, 11, 1, 4, 30), LA, QUIET) == utc(2026, 11, 1, 16, 0)
    # In the repeated hour itself (01:30 PST, second time round) it is still quiet.
    assert next_allowed_send(utc(2026, 11, 1, 9, 30), LA, QUIET) == utc(2026, 11, 1, 16, 0)


def test_a_european_patient_on_their_own_dst_date() -> None:
    # Europe changes on 25 Oct 2026 (US a week later): 08:00 CET = 07:00Z.
    assert next_allowed_send(utc(2026, 10, 24, 20, 0), MADRID, QUIET) == utc(2026, 10, 25, 7, 0)
    # The same UTC instant is 16:00 in New York: no waiting there.
    assert next_allowed_send(utc(2026, 10, 24, 20, 0), NY, QUIET) == utc(2026, 10, 24, 20, 0)


def test_quiet_hours_ending_inside_the_skipped_hour_end_when_the_clocks_jump() -> None:
    quiet = QuietHours(time(23), time(2, 30))
    assert next_allowed_send(utc(2026, 3, 8, 5, 0), NY, quiet) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert at_local_time(date(2026, 11, 1), time(1, 30), NY) == utc(2026, 11, 1, 5, 30)  # first 01:30


def test_daytime_quiet_window_and_none() -> None:
    lunch = QuietHours.parse("12:00-13:00")
    assert next_allowed_send(utc(2026, 6, 1, 16, 30), NY, lunch) == utc(2026, 6, 1, 17, 0)
    assert QuietHours.parse("none") is None and next_allowed_send(utc(2026, 6, 1, 3), NY, None) == utc(2026, 6, 1, 3)
    with pytest.raises(PreferenceError, match="21:00-08:00"):
        QuietHours.parse("9pm to 8am")
