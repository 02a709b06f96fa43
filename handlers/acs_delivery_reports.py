"""Delivery reports of ACS messages: recorded on the message's `Communication`; after a failure, the
patient's next channel (`notifications.fallback_policy`) and the `Vigil.Message.Failed` workflow event.

Reports arrive at least once and out of order (`notifications.delivery_reports` orders them), so
every step here is keyed by the message and safe to repeat.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from handlers.acs_event_model import AcsEvent, AcsEventDeps, AcsOutcome
from notifications.acs_reports import parse_acs_delivery_report
from notifications.communications import FAILURE_SYSTEM, medium_of
from notifications.delivery_reports import apply_delivery_report
from notifications.fallback_policy import fall_back_after_report
from notifications.message_request import DeliveryOutcome
from notifications.workflow_events import WorkflowEventError, message_failed

log = logging.getLogger(__name__)

_CODE_CHARS = re.compile(r"[^a-z0-9\-_.]+")  # what a workflow event's channel and reason codes may hold


def delivery_report(event: AcsEvent, deps: AcsEventDeps) -> AcsOutcome:
    report = parse_acs_delivery_report(event.event_type, event.data)
    sms_channel = deps.channels.get(deps.sms_channel)
    recorded = apply_delivery_report(deps.store, report, clock=deps.clock, ledger=deps.ledger,
                                     channel_name=sms_channel.name if sms_channel is not None else deps.sms_channel)
    if recorded.communication_id is None:
        return AcsOutcome("unknown-message")
    published: tuple[str, ...] = ()
    fallback: DeliveryOutcome | None = None
    held_until: datetime | None = None
    # Only a permanent failure status that leaves the message not delivered; a stale failure after
    # "Delivered" or an unknown status is recorded, nothing more.
    if recorded.failed:
        comm = deps.store.read("Communication", recorded.communication_id)
        reason = _CODE_CHARS.sub("-", report.status.lower()).strip("-") or "undelivered"
        # The patient's next channel first: it must not wait for the workflow topic. Runs on every
        # delivery of the report (idempotent by key): a crash after the failure was recorded still
        # sends the fallback when the report comes again. A transient channel failure raises
        # TransientDeliveryError, so the report is retried at the channel's time.
        result = fall_back_after_report(deps.store, deps.channels, comm, deps.clock, deps.defaults)
        fallback, held_until = result.outcome, result.held_until
        published = publish_best_effort(lambda: _publish_failed(deps, comm, medium_of(comm) or report.kind, reason))
        if fallback is not None:
            published += publish_best_effort(lambda: publish_if_failed(deps, fallback))
    return AcsOutcome("delivery-report", recorded.changed, communication_id=recorded.communication_id,
                      published=published, fallback=fallback, fallback_held_until=held_until)


def publish_best_effort(publish: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
    """A failed delivery's workflow event, without failing the report: the fallback is already
    decided and a topic outage must not have the report retried for it (logged, type only)."""
    try:
        return publish()
    except Exception as exc:
        log.warning("workflow event for a failed message not published: %s", type(exc).__name__)
        return ()


def publish_if_failed(deps: AcsEventDeps, outcome: DeliveryOutcome) -> tuple[str, ...]:
    if outcome.status != "failed":
        return ()
    comm = deps.store.read("Communication", outcome.communication_id)
    codes = [c.get("code") for c in (comm.get("statusReason") or {}).get("coding", [])
             if c.get("system") == FAILURE_SYSTEM]
    return _publish_failed(deps, comm, outcome.channel or deps.sms_channel, codes[0] if codes else "failed")


def _publish_failed(deps: AcsEventDeps, comm: dict[str, Any], channel: str, reason: str) -> tuple[str, ...]:
    about = [a.get("reference") for a in comm.get("about", []) if a.get("reference")]
    patient = (comm.get("subject") or {}).get("reference")
    core = partial(message_failed, communication=f"Communication/{comm['id']}", channel=_code(channel),
                   reason_code=_code(reason), at=deps.clock.now())
    try:
        event = core(patient=patient if str(patient).startswith("Patient/") else None,
                     about=about[0] if about else None)
    except WorkflowEventError:
        event = core()  # a reference of an unexpected shape: keep the core facts
    # Raised on failure: this event is the only trace a subscriber gets, so the inbound-SMS paths
    # have the host retry it (the id is derived from the message, so subscribers de-duplicate a
    # second copy). A delivery report does not wait for it (`publish_best_effort`).
    deps.workflow.publish([event])
    log.info("message %s failed (%s); workflow event published", comm["id"], reason)
    return (event.event_type,)


def _code(text: str) -> str:
    return _CODE_CHARS.sub("-", text.lower()).strip("-")[:64] or "unknown"
