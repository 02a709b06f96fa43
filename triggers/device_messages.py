"""Event Hubs trigger: device messages, in batches (cardinality many)."""

from __future__ import annotations

import typing
from typing import Any

import azure.functions as func

from handlers.in_process import ingest_and_evaluate
from handlers.ingest import RawMessage
from runtime.bootstrap import current, in_process, ingest_deps

bp = func.Blueprint()


@bp.function_name("ingest_device_messages")
# Event Hubs checkpoints past a failed batch unless a retry policy holds it (https://learn.microsoft.com/azure/azure-functions/functions-bindings-error-pages):
# a transient FHIR outage must be retried, not skipped.
@bp.retry(strategy="exponential_backoff", max_retry_count="8", minimum_interval="00:00:05",
          maximum_interval="00:05:00")
@bp.event_hub_message_trigger(
    arg_name="events",
    connection="VIGIL_EVENT_HUB_CONNECTION",
    event_hub_name="%VIGIL_EVENT_HUB_NAME%",
    cardinality="many",
)
# `typing.List`, not `list[...]`: the worker's loader and azure-functions' EventHub converter
# (`check_input_type_annotation`) recognise only `typing` generics and refuse the builtin generic
# alias, so the worker would refuse the whole app (docs/deploy-azure.md, "Indexing").
def ingest_device_messages(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006
    services = current()
    # With the embedded store the batch is evaluated here, after its commit (handlers/in_process.py).
    ingest_and_evaluate([_raw(e, i) for i, e in enumerate(events)], ingest_deps(services), in_process(services))


def _raw(event: func.EventHubEvent, index: int) -> RawMessage:
    """IoT Hub messages carry their device id and creation time in system/application properties,
    which MedTech's IotJsonPathContent templates read from the envelope. In a batch the worker
    puts them in per-batch arrays (`PropertiesArray`, `SystemPropertiesArray`), item i for event i,
    with their original `iothub-` key names."""
    metadata: dict[str, Any] = dict(event.metadata or {})
    return RawMessage(
        body=event.get_body(),
        properties=_item(metadata, "Properties", index),
        system_properties=_item(metadata, "SystemProperties", index),
        partition_key=event.partition_key,
        sequence_number=event.sequence_number,
    )


def _item(metadata: dict[str, Any], name: str, index: int) -> dict[str, Any]:
    many = metadata.get(name + "Array")
    if isinstance(many, list) and index < len(many) and isinstance(many[index], dict):
        return dict(many[index])
    one = metadata.get(name)
    return dict(one) if isinstance(one, dict) else {}
