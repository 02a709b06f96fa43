"""HTTP triggers: the ingest endpoint, a health check and the acknowledgement link."""

from __future__ import annotations

import json

import azure.functions as func

from handlers.ack_page import ack_link_page
from handlers.in_process import ingest_and_evaluate
from handlers.ingest import RawMessage
from ingest.batches import split_messages
from runtime.bootstrap import current, in_process, ingest_deps, messaging

bp = func.Blueprint()

_JSON = "application/json"


@bp.function_name("http_ingest")
@bp.route(route="ingest", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def http_ingest(req: func.HttpRequest) -> func.HttpResponse:
    """Accepts one JSON message, a JSON array of messages, or JSON Lines; answers with the report."""
    messages = [RawMessage(body=chunk) for chunk in split_messages(req.get_body())]
    services = current()
    # As the Event Hubs trigger: with the embedded store, what the request wrote is evaluated here,
    # after its commit (handlers/in_process.py); the outbox keeps what did not complete for the relay.
    report = ingest_and_evaluate(messages, ingest_deps(services), in_process(services))
    # The body: every message's outcome, adding up to "received" (written + superseded +
    # dead_lettered), reasons by code, and the Observation counts apart (docs/ingest-accounting.md).
    status = 200 if report.dead_lettered == 0 else 207
    return func.HttpResponse(json.dumps(report.as_dict()), status_code=status, mimetype=_JSON)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"status": "ok"}), mimetype=_JSON)


@bp.function_name("acknowledge_alert")
@bp.route(route="ack/{token}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def acknowledge_alert(req: func.HttpRequest) -> func.HttpResponse:
    """GET shows a button, POST acknowledges (handlers/ack_page.py)."""
    page = ack_link_page(messaging(current()), req.method, req.route_params.get("token", ""))
    return func.HttpResponse(page.html, status_code=page.status, mimetype="text/html")
