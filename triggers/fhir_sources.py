"""FHIR change events from sources other than Event Grid: a timer that pulls (polling, and keeping
Vigil's Subscriptions in place) and the rest-hook notification endpoint."""

from __future__ import annotations

import json
import logging

import azure.functions as func

from fhirstore.subscriptions import InvalidNotification
from handlers.fhir_events import handle_fhir_event
from runtime.bootstrap import current, event_deps
from runtime.event_sources import RestHookSource, event_source

bp = func.Blueprint()
log = logging.getLogger(__name__)
_JSON = "application/json"


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


@bp.function_name("fhir_notification")
@bp.route(route="fhir-notify", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def fhir_notification(req: func.HttpRequest) -> func.HttpResponse:
    """Rest-hook notifications from Vigil's R4 Subscriptions (VIGIL_EVENT_SOURCE=rest-hook). A body
    Vigil cannot read is dead-lettered and answered 400 (the server should not retry it); a failure
    to evaluate raises, so the server's retry delivers it again."""
    services = current()
    source = event_source(services)
    if not isinstance(source, RestHookSource):
        return func.HttpResponse(json.dumps({"error": "VIGIL_EVENT_SOURCE is not rest-hook"}), status_code=404,
                                 mimetype=_JSON)
    deps = event_deps(services)
    body = req.get_body()
    try:
        result = source.receive(body, lambda payload: handle_fhir_event(payload, deps))
    except InvalidNotification as exc:
        services.dead_letters.add(topic="fhir-notifications", reason="invalid_notification", detail=str(exc),
                                  payload=body, source="rest-hook")
        return func.HttpResponse(json.dumps({"error": str(exc)}), status_code=400, mimetype=_JSON)
    return func.HttpResponse(json.dumps({"kind": result.kind, "delivered": result.delivered}), mimetype=_JSON)
