"""Event Grid trigger: FHIR resource Created/Updated/Deleted events."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from handlers.fhir_events import handle_fhir_event
from runtime.bootstrap import current, event_deps

bp = func.Blueprint()


@bp.function_name("on_fhir_event")
@bp.event_grid_trigger(arg_name="event")
def on_fhir_event(event: func.EventGridEvent) -> None:
    handle_fhir_event(event_payload(event), event_deps(current()))


def event_payload(event: object) -> dict:
    """The event as the Event Grid schema dict, whichever object the worker built: an
    `EventGridEvent`, or a `CloudEvent` when the subscription delivers the CloudEvents schema."""
    when: Any = getattr(event, "event_time", None) or getattr(event, "time", None)
    return {
        "id": getattr(event, "id", None),
        "topic": getattr(event, "topic", None) or getattr(event, "source", None),
        "subject": getattr(event, "subject", None),
        "eventType": getattr(event, "event_type", None) or getattr(event, "type", None),
        "eventTime": when.isoformat() if hasattr(when, "isoformat") else when,
        "dataVersion": getattr(event, "data_version", None) or getattr(event, "dataschema", None),
        "data": event.get_json(),  # type: ignore[attr-defined]
    }
