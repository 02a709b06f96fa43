"""Timer triggers: periodic sweeps."""

from __future__ import annotations

import azure.functions as func

from handlers.message_sweep import resume_pending_messages
from runtime.bootstrap import current
from triggers.fhir_events import policy_from

bp = func.Blueprint()


@bp.function_name("message_retry_sweep")
@bp.timer_trigger(arg_name="timer", schedule="0 */1 * * * *", run_on_startup=False, use_monitor=False)
def message_retry_sweep(timer: func.TimerRequest) -> None:
    services = current()
    resume_pending_messages(
        store=services.store,
        rules=services.rules,
        channels=services.channels,
        clock=services.clock,
        policy=policy_from(services.settings),
    )
