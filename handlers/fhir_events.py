"""A FHIR resource changed → evaluate rules → alert → messages.

Events are at-least-once and unordered, and carry ids only: the handler fetches the version the
event names and acts on that version alone. Everything downstream is keyed deterministically, so
a re-delivered event opens nothing new and sends nothing again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from common.clock import Clock
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.events import InvalidEvent, parse_event
from fhirstore.port import FhirStore
from handlers.alerts import MessagePolicy, notify, open_alert
from ingest.deadletter import DeadLetterSink
from notifications.channels.base import Channel
from rules.simple import ThresholdRule, evaluate

log = logging.getLogger(__name__)

EVALUATED_STATUSES = frozenset({"final", "amended", "corrected"})


@dataclass
class EventOutcome:
    status: str  # evaluated | ignored | gone | dead-lettered
    alerts_opened: int = 0
    messages_sent: int = 0
    rules_fired: list[str] = field(default_factory=list)


def handle_fhir_event(
    payload: dict[str, Any],
    *,
    store: FhirStore,
    rules: list[ThresholdRule],
    channels: dict[str, Channel],
    clock: Clock,
    dead_letters: DeadLetterSink,
    policy: MessagePolicy,
    topic: str = "fhir-events",
) -> EventOutcome:
    try:
        event = parse_event(payload)
    except InvalidEvent as exc:
        dead_letters.add(topic=topic, reason="invalid_event", detail=str(exc),
                         payload=json.dumps(payload, default=str).encode(), source="fhir-events")
        return EventOutcome("dead-lettered")
    if event.resource_type != "Observation" or event.action == "deleted":
        return EventOutcome("ignored")
    try:
        observation = store.vread("Observation", event.resource_id, event.version_id)
    except (ResourceNotFound, ResourceGone):
        # The version is gone (deleted, or purged): nothing left to evaluate.
        return EventOutcome("gone")
    if observation.get("status") not in EVALUATED_STATUSES:
        return EventOutcome("ignored")
    outcome = EventOutcome("evaluated")
    for firing in evaluate(rules, observation):
        issue, created = open_alert(store, firing, observation)
        outcome.rules_fired.append(firing.rule.id)
        outcome.alerts_opened += int(created)
        sent = notify(store, channels, clock, firing.rule, issue, policy)
        outcome.messages_sent += sum(1 for o in sent if o.status == "sent")
    return outcome
