"""Timer triggers: periodic sweeps."""

from __future__ import annotations

import azure.functions as func

from handlers.sweeps import run_alert_sweep
from runtime.bootstrap import current
from triggers.fhir_events import event_deps

bp = func.Blueprint()


@bp.function_name("alert_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */15 * * * *", run_on_startup=False, use_monitor=True)
def alert_sweep(timer: func.TimerRequest) -> None:
    """Absence of data and closing of resolved episodes, every 15 minutes."""
    deps = event_deps(current())
    run_alert_sweep(deps.store, deps.rulesets, deps.channels, deps.clock, deps.policy)
