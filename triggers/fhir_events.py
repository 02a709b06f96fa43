"""Event Grid trigger: FHIR resource Created/Updated/Deleted events."""

from __future__ import annotations

import azure.functions as func

from handlers.alerts import MessagePolicy
from handlers.fhir_events import handle_fhir_event
from runtime.bootstrap import current

bp = func.Blueprint()


@bp.function_name("on_fhir_event")
@bp.event_grid_trigger(arg_name="event")
def on_fhir_event(event: func.EventGridEvent) -> None:
    services = current()
    payload = {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }
    handle_fhir_event(
        payload,
        store=services.store,
        rules=services.rules,
        channels=services.channels,
        clock=services.clock,
        dead_letters=services.dead_letters,
        policy=policy_from(services.settings),
    )


def policy_from(settings) -> MessagePolicy:  # noqa: ANN001 - Settings, kept import-light
    return MessagePolicy(program_contact=settings.program_contact, staff_address=settings.staff_address)
