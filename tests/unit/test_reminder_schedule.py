"""The reminder schedule file: a bad one is refused with the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.reminder_schedule import ReminderConfigError, load_schedule


def test_a_bad_schedule_names_the_file_line_and_field() -> None:
    text = """
defaults: {daily_cap: 1}
programs:
  hypertension:
    reminders:
      - {id: bp, kind: reading, metric: systolic_bp, at: "8 o'clock"}
"""
    with pytest.raises(ReminderConfigError, match=r"<reminders>:6: programs\.hypertension\.reminders\[0\]\.at: "
                                                  r"must be a quoted wall-clock time"):
        load_schedule(text)
    with pytest.raises(ReminderConfigError, match=r":6: .*metric: unknown metric 'bp_sys'"):
        load_schedule(text.replace("systolic_bp", "bp_sys").replace("8 o'clock", "08:00"))
    with pytest.raises(ReminderConfigError, match=r"weekly_cap 1 is below daily_cap 2"):
        load_schedule(text.replace("daily_cap: 1", "daily_cap: 2, weekly_cap: 1").replace("8 o'clock", "08:00"))
    with pytest.raises(ReminderConfigError, match=r"nowhere\.yaml: cannot read"):
        load_schedule(Path("/nowhere.yaml"))


def test_the_shipped_schedule_loads() -> None:
    schedule = load_schedule()
    assert schedule.programs and all(pr.daily_cap <= pr.weekly_cap for pr in schedule.programs.values())

