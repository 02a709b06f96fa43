"""Timer trigger: the daily retention purge (runtime/retention.py, docs/operations.md)."""

from __future__ import annotations

import azure.functions as func

from runtime.bootstrap import current
from runtime.retention import apply_retention

bp = func.Blueprint()


@bp.function_name("retention_purge")
@bp.timer_trigger(arg_name="timer", schedule="0 17 3 * * *", run_on_startup=False, use_monitor=True)
def retention_purge(timer: func.TimerRequest) -> None:
    """Remove health data older than the retention settings, never pending work, daily at 03:17."""
    apply_retention(current())
