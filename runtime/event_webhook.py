"""An Event Grid webhook on `vigil serve`: the local host behind a real Event Grid subscription.

`POST /api/events/fhir` takes what an Event Grid subscription delivers to a webhook endpoint
(Azure docs, "Receive events to an HTTP endpoint" and "Webhook event delivery"):
- the Event Grid schema: a JSON array of events. A `Microsoft.EventGrid.SubscriptionValidationEvent`
  is answered with `{"validationResponse": <data.validationCode>}` (the synchronous handshake);
- the CloudEvents 1.0 schema: one event (`application/cloudevents+json`) or a batch
  (`application/cloudevents-batch+json`);
and `OPTIONS` is the CloudEvents abuse-protection handshake (CloudEvents HTTP webhook spec §4):
`WebHook-Request-Origin` is echoed in `WebHook-Allowed-Origin`, `WebHook-Allowed-Rate` answers
`WebHook-Request-Rate`.

Events are put on the local bus queue of the Event Grid functions subscribed to FHIR events, so the
same `on_fhir_event` function and handler run them, with the bus's retries and dead letters; a 200
means they are stored. The key (local token) is required like every keyed route: put `?code=<token>`
in the subscription's endpoint URL, or send it as the `x-functions-key` delivery header.
"""

from __future__ import annotations

import json
from typing import Any

from fhirstore.errors import InvalidResource
from fhirstore.json_body import parse_json_body
from runtime.host import FHIR_EVENT_SUBSCRIBERS, LocalHost
from runtime.http_app import Request, Response, RouteRegistry, json_error

ROUTE = "/api/events/fhir"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
_JSON = {"Content-Type": "application/json"}


def add_event_grid_webhook(registry: RouteRegistry, host: LocalHost, path: str = ROUTE) -> None:
    queues = [s.source for s in host.of_kind("eventGridTrigger") if s.name in FHIR_EVENT_SUBSCRIBERS]

    def webhook(request: Request) -> Response:
        if request.method == "OPTIONS":
            return abuse_protection(request)
        return deliver(request, host, queues)

    registry.add(path, webhook, methods=("POST", "OPTIONS"), auth="key", name="event_grid_webhook")


def abuse_protection(request: Request) -> Response:
    origin = request.headers.get("webhook-request-origin")
    if not origin:
        return json_error(400, "OPTIONS here is the CloudEvents webhook handshake: send WebHook-Request-Origin")
    headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST, OPTIONS"}
    if request.headers.get("webhook-request-rate"):
        headers["WebHook-Allowed-Rate"] = "*"
    return Response(200, headers)


def deliver(request: Request, host: LocalHost, queues: list[str]) -> Response:
    try:
        body = parse_json_body(request.body)
    except InvalidResource as exc:
        return json_error(400, str(exc))
    events = body if isinstance(body, list) else [body]
    if not events or not all(isinstance(e, dict) for e in events):
        return json_error(400, "expected an event object or a JSON array of event objects")
    for event in events:
        if _type(event) == VALIDATION_EVENT:
            code = (event.get("data") or {}).get("validationCode") if isinstance(event.get("data"), dict) else None
            if not isinstance(code, str) or not code:
                return json_error(400, "SubscriptionValidationEvent without data.validationCode")
            return Response(200, dict(_JSON), json.dumps({"validationResponse": code}).encode())
    missing = [i for i, e in enumerate(events) if not isinstance(e.get("id"), str) or not e["id"]]
    if missing:
        return json_error(400, f"event {missing[0]} has no id (Event Grid and CloudEvents events carry one)")
    accepted = 0
    for queue in queues:
        accepted = host.bus.publish_many(queue, ((json.dumps(e).encode(), e["id"], _subject(e), None) for e in events))
    report = {"received": len(events), "queued": accepted, "types": _types(events)}
    return Response(200, dict(_JSON), json.dumps(report).encode())


def _type(event: dict[str, Any]) -> Any:
    return event.get("eventType") or event.get("type")


def _subject(event: dict[str, Any]) -> str | None:
    subject = event.get("subject")
    return subject if isinstance(subject, str) else None


def _types(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        name = str(_type(event))[:120]
        counts[name] = counts.get(name, 0) + 1
    return counts
