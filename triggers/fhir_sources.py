"""FHIR change events from sources other than Event Grid: a timer that pulls (polling, and keeping
Vigil's Subscriptions in place) and the rest-hook notification endpoint (runtime/event_sources.py)."""

from __future__ import annotations

import json

import azure.functions as func

from runtime.bootstrap import current
from runtime.event_sources import pull_changes, receive_notification

bp = func.Blueprint()


@bp.function_name("pull_fhir_changes")
@bp.timer_trigger(arg_name="timer", schedule="15 * * * * *", run_on_startup=False, use_monitor=True)
def pull_fhir_changes(timer: func.TimerRequest) -> None:
    """Every minute: what a polling source finds goes down `on_fhir_event`'s path."""
    pull_changes(current())


@bp.function_name("fhir_notification")
@bp.route(route="fhir-notify", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def fhir_notification(req: func.HttpRequest) -> func.HttpResponse:
    """Rest-hook notifications from Vigil's R4 Subscriptions (VIGIL_EVENT_SOURCE=rest-hook)."""
    answer = receive_notification(current(), req.get_body())
    return func.HttpResponse(json.dumps(answer.body), status_code=answer.status, mimetype="application/json")
