"""Delivery reports, provider-neutral: a `DeliveryReport` (parsed once from the provider's event,
e.g. `notifications.acs_reports`) recorded on the Communication it is about.

Reports arrive at least once and out of order. Only a permanent failure status marks the message
`not-done` (the caller then announces the failure and walks on to its fallback); any other status
is recorded on the Communication (`urn:vigil:delivery-status`) and nothing else, so an unknown
word never sends a second message. Delivered is final: a failure reported after it is stale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.clock import Clock, parse_instant
from fhirstore.port import FhirStore
from notifications.channels.base import ChannelKind
from notifications.channels.ledger import SendLedger
from notifications.channels.pipeline import ledger_key
from notifications.communications import (
    COMMUNICATION_SYSTEM,
    DELIVERY_STATUS_EXT,
    PROVIDER_MESSAGE_ID_SYSTEM,
    status_reason,
)
from notifications.provider_replies import scrub

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryReport:
    """A provider's word on one message it accepted.

    `message_id` is Vigil's id when the provider echoes it (an SMS tag), else `provider_id` (the id
    the provider gave on accepting it) finds the message. `failed` is True for a status that means
    the message will not arrive."""

    kind: ChannelKind
    status: str  # the provider's status word (Delivered, Failed, Bounced, ...)
    delivered: bool
    failed: bool
    message_id: str | None = None
    provider_id: str | None = None
    detail: str = ""  # the provider's explanation; scrubbed before it is kept
    received: str | None = None  # when the outcome happened, as the provider wrote it (FHIR dateTime)

    @property
    def received_at(self) -> datetime | None:
        try:
            return parse_instant(self.received) if self.received else None
        except ValueError:
            return None


@dataclass(frozen=True)
class ReportOutcome:
    """What recording a report did. `failed`: the message now stands as not delivered (also on a
    re-delivery of that report); the caller then calls `deliver_fallback`."""

    communication_id: str | None
    delivered: bool
    status: str
    changed: bool
    failed: bool = False


def apply_delivery_report(store: FhirStore, report: DeliveryReport, *, clock: Clock,
                          ledger: SendLedger | None = None, channel_name: str = "sms") -> ReportOutcome:
    """Record `report` on its Communication. A "Delivered" report for a message the send ledger of
    channel `channel_name` holds as in-doubt resolves it (pass that channel's ledger)."""
    if report.message_id and ledger is not None and report.delivered:
        ledger.mark_sent(ledger_key(channel_name, report.message_id), report.provider_id,
                         report.received_at or clock.now())
    query = ({"identifier": f"{COMMUNICATION_SYSTEM}|{report.message_id}"} if report.message_id
             else {"identifier": f"{PROVIDER_MESSAGE_ID_SYSTEM}|{report.provider_id}"})
    found = store.search("Communication", query).resources
    if not found:
        log.info("delivery report for an unknown message (%s)", report.status or "no status")
        return ReportOutcome(None, report.delivered, report.status, False)
    comm = found[0]
    if report.failed and _reported_status(comm) == "delivered":
        log.info("message %s: a %s report after it was reported delivered; kept as delivered", comm["id"],
                 report.status)
        return ReportOutcome(comm["id"], False, report.status, False)
    updated = _updated(comm, report)
    changed = updated != comm
    if changed:
        store.update(updated)
        log.info("message %s delivery report: %s", comm["id"], report.status or "unknown")
    return ReportOutcome(comm["id"], report.delivered, report.status, changed,
                         failed=report.failed and updated["status"] == "not-done")


def _updated(comm: dict[str, Any], report: DeliveryReport) -> dict[str, Any]:
    updated = dict(comm)
    keep = [e for e in comm.get("extension", []) if e.get("url") != DELIVERY_STATUS_EXT]
    updated["extension"] = [*keep, {"url": DELIVERY_STATUS_EXT, "valueCode": _status_code(report.status)}]
    if report.delivered:
        if comm["status"] != "completed":
            # An in-doubt send that did go out after all (or a failure report that came first).
            updated["status"] = "completed"
            updated.pop("statusReason", None)
        if report.received:
            updated["received"] = report.received
    elif report.failed and comm["status"] in ("completed", "preparation"):
        # `preparation`: the provider took it but the send was never recorded (a crash between
        # the two); the report is the only word on it.
        updated["status"] = "not-done"
        detail = scrub(report.detail, 200)
        reason = f"the provider reported {report.status or 'a failure'}" + (f": {detail}" if detail else "")
        updated["statusReason"] = status_reason(reason, "undelivered")
    return updated


def _reported_status(comm: dict[str, Any]) -> str | None:
    return next((e.get("valueCode") for e in comm.get("extension", []) if e.get("url") == DELIVERY_STATUS_EXT),
                None)


def _status_code(status: str) -> str:
    # A FHIR code has no leading/trailing or doubled whitespace; the provider's word is kept otherwise.
    return "-".join(status.lower().split()) or "unknown"
