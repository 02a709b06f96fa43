"""Event Grid trigger: FHIR resource Created/Updated/Deleted events."""

from __future__ import annotations

import azure.functions as func

from handlers.alerting import MessagePolicy
from handlers.fhir_events import EventDeps, handle_fhir_event
from runtime.bootstrap import Services, current

bp = func.Blueprint()


@bp.function_name("on_fhir_event")
@bp.event_grid_trigger(arg_name="event")
def on_fhir_event(event: func.EventGridEvent) -> None:
    payload = {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }
    handle_fhir_event(payload, event_deps(current()))


def event_deps(services: Services) -> EventDeps:
    settings = services.settings
    return EventDeps(
        store=services.store,
        rulesets=services.rulesets,
        channels=services.channels,
        clock=services.clock,
        dead_letters=services.dead_letters,
        policy=MessagePolicy(program_contact=settings.program_contact, staff_address=settings.staff_address),
    )
