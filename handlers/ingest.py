"""Device messages in → FHIR Observations out, with every rejected message dead-lettered.

The same handler serves the Event Hubs trigger, the local bus and the HTTP ingest endpoint. It is
safe to re-deliver: Observations have deterministic ids and an unchanged re-write is a no-op.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fhirstore.errors import FhirError, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from ingest.deadletter import DeadLetterSink
from ingest.errors import IngestError
from ingest.generic import to_observation

log = logging.getLogger(__name__)

# FHIR errors worth retrying the whole batch for (the server, not the message, is the problem).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    partition_key: str | None = None
    sequence_number: int | None = None


@dataclass
class IngestReport:
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    dead_lettered: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return self.created + self.updated + self.unchanged

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "dead_lettered": self.dead_lettered,
            "reasons": dict(self.reasons),
        }


def handle_device_messages(
    messages: list[RawMessage],
    *,
    store: FhirStore,
    dead_letters: DeadLetterSink,
    topic: str,
    max_bytes: int,
) -> IngestReport:
    """Ingest a batch. Bad messages are parked with a reason; the rest of the batch goes on.

    A transient FHIR failure raises, so the trigger fails and the batch is delivered again."""
    report = IngestReport(received=len(messages))
    known_patients: dict[str, bool] = {}
    for message in messages:
        try:
            observation = _parse(message, max_bytes)
            _require_patient(store, observation, known_patients)
            result = store.update(observation)
        except IngestError as exc:
            _park(dead_letters, topic, message, exc.reason, exc.detail, report)
            continue
        except FhirError as exc:
            if exc.status in TRANSIENT_STATUSES:
                raise
            _park(dead_letters, topic, message, "fhir_rejected", f"FHIR server answered {exc.status}: {exc}", report)
            continue
        if result.outcome == "created":
            report.created += 1
        elif result.outcome == "updated":
            report.updated += 1
        else:
            report.unchanged += 1
    if report.dead_lettered:
        log.warning("ingest batch: %d of %d messages dead-lettered %s", report.dead_lettered,
                    report.received, dict(report.reasons))
    return report


def _parse(message: RawMessage, max_bytes: int) -> dict[str, Any]:
    if len(message.body) > max_bytes:
        raise IngestError("oversized", f"message is {len(message.body)} bytes; the limit is {max_bytes}")
    try:
        parsed = json.loads(message.body)
    except UnicodeDecodeError:
        raise IngestError("invalid_json", "message is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise IngestError("invalid_json", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return to_observation(parsed)


def _require_patient(store: FhirStore, observation: dict[str, Any], cache: dict[str, bool]) -> None:
    ref = observation["subject"]["reference"]
    if ref not in cache:
        type_, _, id_ = ref.partition("/")
        try:
            store.read(type_, id_)
            cache[ref] = True
        except (ResourceNotFound, ResourceGone):
            cache[ref] = False
        except FhirError as exc:
            if exc.status == 400:  # a malformed id: the message's fault
                cache[ref] = False
            else:
                raise
    if not cache[ref]:
        raise IngestError("unknown_patient", "field 'patientId' names no active Patient in the FHIR store")


def _park(
    dead_letters: DeadLetterSink, topic: str, message: RawMessage, reason: str, detail: str, report: IngestReport
) -> None:
    dead_letters.add(
        topic=topic,
        reason=reason,
        detail=detail,
        payload=message.body,
        source="ingest",
        properties={"partition_key": message.partition_key, "sequence_number": message.sequence_number,
                    **message.properties},
    )
    report.dead_lettered += 1
    report.reasons[reason] += 1
