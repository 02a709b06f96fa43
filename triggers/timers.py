"""Timer triggers: periodic sweeps."""

from __future__ import annotations

import azure.functions as func

from handlers.pipeline_health import check_pipeline
from handlers.reminders import run_reminder_sweep
from handlers.sweeps import recheck_snoozes as sweep_snoozes
from handlers.sweeps import run_alert_sweep, run_escalation_sweep
from runtime.bootstrap import Services, current, event_deps, messaging, pipeline_deps

bp = func.Blueprint()


@bp.function_name("alert_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def alert_sweep(timer: func.TimerRequest) -> None:
    """Absence of data, deferred patient messages and closing of resolved episodes, every 15 minutes;
    then the staff notice if the pipeline itself looks stalled (handlers/pipeline_health.py)."""
    services = current()
    run_alert_sweep(messaging(services), services.rulesets)
    recheck_snoozes(services)
    check_pipeline(pipeline_deps(services))


def recheck_snoozes(services: Services) -> int:
    return sweep_snoozes(services.store, services.clock.now(), event_deps(services))


@bp.function_name("escalation_sweep")
@bp.timer_trigger(arg_name="timer", schedule="30 * * * * *", run_on_startup=False, use_monitor=True)
def escalation_sweep(timer: func.TimerRequest) -> None:
    """Advance escalation chains whose wait ran out, every minute."""
    run_escalation_sweep(messaging(current()))


@bp.function_name("reminder_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */10 * * * *", run_on_startup=False, use_monitor=True)
def reminder_sweep(timer: func.TimerRequest) -> None:
    """Patient reminders that are due in each patient's own time zone, every 10 minutes."""
    services = current()
    run_reminder_sweep(messaging(services), services.rulesets)
