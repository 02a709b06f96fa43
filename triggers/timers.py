"""Timer triggers: periodic sweeps."""

from __future__ import annotations

import azure.functions as func

from handlers.quarter_hour_sweep import run_quarter_hour_sweep
from handlers.reminders import run_reminder_sweep
from handlers.sweeps import run_escalation_sweep
from runtime.bootstrap import current, messaging, quarter_hour_deps, reminder_deps

bp = func.Blueprint()


@bp.function_name("alert_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def alert_sweep(timer: func.TimerRequest) -> None:
    """Absence of data, deferred patient messages, closing of resolved episodes and ended snoozes,
    every 15 minutes; then the staff notice if the pipeline looks stalled (handlers/quarter_hour_sweep.py)."""
    run_quarter_hour_sweep(quarter_hour_deps(current()))


@bp.function_name("escalation_sweep")
@bp.timer_trigger(arg_name="timer", schedule="30 * * * * *", run_on_startup=False, use_monitor=True)
def escalation_sweep(timer: func.TimerRequest) -> None:
    """Advance escalation chains whose wait ran out, every minute."""
    run_escalation_sweep(messaging(current()))


@bp.function_name("reminder_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */10 * * * *", run_on_startup=False, use_monitor=True)
def reminder_sweep(timer: func.TimerRequest) -> None:
    """Patient reminders that are due in each patient's own time zone, every 10 minutes."""
    run_reminder_sweep(reminder_deps(current()))
