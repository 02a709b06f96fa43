"""Timer trigger: pull FHIR changes from an event source that does not push (polling)."""

from __future__ import annotations

import logging

import azure.functions as func

from handlers.fhir_events import handle_fhir_event
from runtime.bootstrap import current
from runtime.event_sources import event_source
from triggers.fhir_events import event_deps

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("pull_fhir_changes")
@bp.timer_trigger(arg_name="timer", schedule="15 * * * * *", run_on_startup=False, use_monitor=True)
def pull_fhir_changes(timer: func.TimerRequest) -> None:
    """Every minute: the changes a polling source finds go down `on_fhir_event`'s path. With a
    pushed source (Event Grid, the embedded outbox) there is nothing to pull and nothing is read."""
    services = current()
    deps = event_deps(services)
    pulled = event_source(services).pull(lambda payload: handle_fhir_event(payload, deps))
    if pulled:
        log.info("pulled %d FHIR change event(s)", pulled)
