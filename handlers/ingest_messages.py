"""One device message on its own (handlers.ingest): decoded, checked and normalized into
measurements, or the specific reason it is dead-lettered. Nothing a message holds may stop its
batch, so every failure of this step is that message's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from common import jsonnum
from common.clock import Clock
from fhirstore.port import FhirStore
from ingest.deadletter import DeadLetterSink
from ingest.identity import IdentityResolver
from ingest.poison import INVALID_UNICODE, POISON, lone_surrogate_path, poison_error
from ingest.report import IngestReport
from ingest.templates.device import DeviceTemplateSet
from ingest.templates.errors import INVALID_JSON, MappingFailure, MessageError
from ingest.templates.measurement import Measurement
from ingest.templates.reading_time import DEFAULT_MAX_FUTURE_SKEW, check_reading_times
from ingest.templates.reload import TemplatePair


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    system_properties: dict[str, Any] = field(default_factory=dict)
    partition_key: str | None = None
    sequence_number: int | None = None


@dataclass(frozen=True)
class IngestDeps:
    store: FhirStore
    dead_letters: DeadLetterSink
    templates: Callable[[], TemplatePair]  # the current templates (reloaded when the files change)
    identity: IdentityResolver
    clock: Clock
    topic: str = "device-messages"
    max_bytes: int = 256 * 1024
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW  # readings dated further ahead are dead-lettered


def decode_message(message: RawMessage, deps: IngestDeps, devices: DeviceTemplateSet,
                   now: datetime) -> list[Measurement] | MessageError:
    """The message's measurements, or why it is dead-lettered."""
    if len(message.body) > deps.max_bytes:
        return MessageError("oversized", f"message is {len(message.body)} bytes; the limit is {deps.max_bytes}")
    try:
        parsed = jsonnum.loads(message.body)  # numbers as written: a device's 22.40 stays 22.40
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return MessageError(INVALID_JSON, f"not valid JSON{where}")
    except POISON as exc:
        return poison_error(exc, "decoding JSON")
    surrogate = lone_surrogate_path(message.body, parsed)
    if surrogate is not None:
        return MessageError(INVALID_UNICODE, f"the string at {surrogate} holds a lone UTF-16 surrogate, "
                                             "which is not Unicode text (RFC 8259 §8.2, RFC 7493 §2.1)")
    try:
        result = devices.normalize(parsed, properties=message.properties,
                                   system_properties=message.system_properties, ingested_at=now)
    except POISON as exc:  # the templates do no I/O: whatever they raise, this message caused
        return poison_error(exc, "applying the device templates")
    if not result.ok:
        return result.errors[0]
    try:  # a device clock ahead of the arrival time (ingest/templates/reading_time.py)
        check_reading_times(result.measurements, now, deps.max_future_skew)
    except MappingFailure as failure:
        return failure.to_error()
    return list(result.measurements)


def park_message(deps: IngestDeps, message: RawMessage, error: MessageError, version: int,
                 report: IngestReport) -> None:
    """Dead-letter the message with its reason and where in the templates it failed."""
    where = {k: v for k, v in {"template_index": error.template_index, "type_name": error.type_name,
                               "field": error.field, "expression": error.expression}.items() if v is not None}
    detail = error.detail + ("" if not where else " [" + ", ".join(f"{k}={v}" for k, v in where.items()) + "]")
    deps.dead_letters.add(
        topic=deps.topic, reason=error.reason, detail=detail, payload=message.body, source="ingest",
        properties={"partition_key": message.partition_key, "sequence_number": message.sequence_number,
                    "templates_version": version, **where, **message.properties},
    )
    report.dead_lettered += 1
    report.reasons[error.reason] += 1
