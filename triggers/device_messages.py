"""Event Hubs trigger: device messages, in batches (cardinality many)."""

from __future__ import annotations

import azure.functions as func

from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import current

bp = func.Blueprint()


@bp.function_name("ingest_device_messages")
@bp.event_hub_message_trigger(
    arg_name="events",
    connection="VIGIL_EVENT_HUB_CONNECTION",
    event_hub_name="%VIGIL_EVENT_HUB_NAME%",
    cardinality="many",
)
def ingest_device_messages(events: list[func.EventHubEvent]) -> None:
    services = current()
    handle_device_messages(
        [
            RawMessage(
                body=e.get_body(),
                properties=dict(e.metadata.get("Properties") or {}) if e.metadata else {},
                partition_key=e.partition_key,
                sequence_number=e.sequence_number,
            )
            for e in events
        ],
        store=services.store,
        dead_letters=services.dead_letters,
        topic=services.settings.event_hub_name,
        max_bytes=services.settings.max_message_bytes,
    )
