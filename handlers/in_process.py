"""Evaluate a batch's new Observations in the process that wrote them, right after the commit.

With the embedded store the host that ingests is also the one that evaluates: relaying each
Observation's event through the outbox and the bus to `on_fhir_event` only to read it back costs
more than the rules do. So the ingest trigger hands the versions it wrote to the same handler path
(`handlers.fhir_events.handle_fhir_event`, the same event payload, the same deterministic keys)
and then settles their outbox events. The outbox still guarantees delivery: an event is settled
only after its evaluation returned, so one whose evaluation failed, or that a crash interrupted,
stays in the outbox and the relay delivers it (with the bus's retries and dead-lettering), and
evaluating a version twice opens and sends nothing twice. Only versions whose event is still
pending are evaluated: a replayed batch that wrote nothing new evaluates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.storage import describe as storage_fault
from fhirstore.event_source import change_event
from fhirstore.port import EventOutbox
from handlers.fhir_events import EventDeps, handle_fhir_event
from handlers.ingest import IngestDeps, RawMessage, handle_device_messages
from ingest.report import IngestReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InProcess:
    """What evaluating in the writing process needs: the event handler's dependencies and the
    embedded store's outbox, whose pending events say what is still to evaluate."""

    events: EventDeps
    outbox: EventOutbox
    account: str


def evaluate_in_process(outbox: EventOutbox, stored: Sequence[dict[str, Any]],
                        deliver: Callable[[dict[str, Any], dict[str, Any]], Any],
                        *, account: str, topic: str = "in-process") -> int:
    """Deliver each stored version's event, with the version as written, to `deliver(event,
    resource)`, then settle the ones that returned. Returns how many were evaluated here."""
    if not stored:
        return 0
    settled: list[int] = []
    for resource in stored:
        meta = resource.get("meta") or {}
        version = (str(resource.get("resourceType")), str(resource.get("id")), str(meta.get("versionId")))
        seqs = outbox.outbox_find([version])
        event = change_event(resource, account=account, topic=topic) if seqs else None
        if event is None:
            continue  # already delivered (a replay), or not a stored version
        try:
            deliver(event, resource)
        except Exception as exc:  # left to the relay, which retries and dead-letters
            if storage_fault(exc) is not None:
                raise  # Vigil's own storage failed: the host stops and says which (runtime.host)
            log.warning("in-process evaluation failed (%s); the outbox event stays for the relay", type(exc).__name__)
            continue
        settled += seqs
    outbox.outbox_done(settled)
    return len(settled)


def ingest_and_evaluate(messages: Sequence[RawMessage], ingest: IngestDeps, here: InProcess | None) -> IngestReport:
    """Ingest a batch (`handlers.ingest.handle_device_messages`) and, with the embedded store
    (`here`), evaluate what it wrote in this process; returns the ingest report."""
    report = handle_device_messages(list(messages), ingest)
    if here is not None:
        events = here.events
        evaluate_in_process(here.outbox, report.stored,
                            lambda event, resource: handle_fhir_event(event, events, stored=resource),
                            account=here.account)
    return report
