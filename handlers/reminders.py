"""Patient reminders (issue 5 item 8). Being written."""

from __future__ import annotations

from dataclasses import dataclass

from handlers.messaging import Messaging


@dataclass
class ReminderReport:
    patients: int = 0
    sent: int = 0
    skipped_done: int = 0
    deferred: int = 0
    capped: int = 0


def run_reminder_sweep(m: Messaging, rulesets: list) -> ReminderReport:  # noqa: ARG001
    return ReminderReport()
