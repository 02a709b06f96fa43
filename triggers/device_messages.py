"""Event Hubs trigger: device messages, in batches (cardinality many)."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from handlers.ingest import IngestDeps, RawMessage, handle_device_messages
from runtime.bootstrap import Services, current

bp = func.Blueprint()


@bp.function_name("ingest_device_messages")
@bp.event_hub_message_trigger(
    arg_name="events",
    connection="VIGIL_EVENT_HUB_CONNECTION",
    event_hub_name="%VIGIL_EVENT_HUB_NAME%",
    cardinality="many",
)
def ingest_device_messages(events: list[func.EventHubEvent]) -> None:
    handle_device_messages([_raw(e) for e in events], ingest_deps(current()))


def _raw(event: func.EventHubEvent) -> RawMessage:
    # IoT Hub messages carry their device id and creation time in system/application properties,
    # which MedTech's IotJsonPathContent templates read from the envelope.
    metadata: dict[str, Any] = dict(event.metadata or {})
    return RawMessage(
        body=event.get_body(),
        properties=dict(metadata.get("Properties") or {}),
        system_properties=dict(event.iothub_metadata or metadata.get("SystemProperties") or {}),
        partition_key=event.partition_key,
        sequence_number=event.sequence_number,
    )


def ingest_deps(services: Services) -> IngestDeps:
    return IngestDeps(
        store=services.store,
        dead_letters=services.dead_letters,
        templates=services.templates.current,
        identity=services.identity,
        clock=services.clock,
        topic=services.settings.event_hub_name,
        max_bytes=services.settings.max_message_bytes,
    )
