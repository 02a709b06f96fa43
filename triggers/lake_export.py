"""Timer trigger: the incremental analytics export to the data lake (runtime/lake_export.py, docs/analytics.md)."""

from __future__ import annotations

import azure.functions as func

from runtime.bootstrap import current
from runtime.lake_export import scheduled_export

bp = func.Blueprint()


@bp.function_name("lake_export")
@bp.timer_trigger(arg_name="timer", schedule="0 5 * * * *", run_on_startup=False, use_monitor=True)
def lake_export(timer: func.TimerRequest) -> None:
    """Export what changed since the last run to VIGIL_EXPORT_DEST, hourly at minute 5."""
    services = current()
    scheduled_export(services.settings, clock=services.clock)
