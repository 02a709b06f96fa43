"""Send one message exactly once: record it as a Communication, send it, record the outcome.

The Communication carries a deterministic identifier (DESIGN §7). Its status is the outbox state:
preparation  -> recorded, not yet known to be sent
completed    -> the channel accepted it (provider id kept)
not-done     -> the channel refused it for good (reason kept)
A re-delivered request finds the Communication already `completed` or `not-done` and sends
nothing. A crash between send and record leaves it in `preparation`; the retry sends again
through the channel, which must refuse a second send of the same message id (the outbox channel
does by construction; provider channels keep their own record).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from common.clock import Clock, iso
from common.codes import vigil_system
from fhirstore.port import FhirStore
from notifications.channels.base import Channel, OutgoingMessage

log = logging.getLogger(__name__)

COMMUNICATION_SYSTEM = vigil_system("communication")


@dataclass(frozen=True)
class MessageRequest:
    """One message to one recipient about one thing, before it is recorded."""

    key: str  # what makes this message unique (e.g. alert identifier + recipient + template)
    channel: str
    to: str
    body: str
    subject: str | None = None
    patient_ref: str | None = None  # "Patient/<id>" the message is about
    about_ref: str | None = None  # e.g. "DetectedIssue/<id>"
    recipient_ref: str | None = None  # Patient/Practitioner reference of the recipient
    category: str = "alert"  # alert | reminder | notification
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def message_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DeliveryOutcome:
    status: Literal["sent", "already-sent", "failed", "retry"]
    communication_id: str
    provider_id: str | None = None
    reason: str | None = None


class TransientDeliveryError(RuntimeError):
    """The channel failed in a way worth retrying; the caller's retry policy decides when."""


def deliver(store: FhirStore, channels: dict[str, Channel], request: MessageRequest, clock: Clock) -> DeliveryOutcome:
    comm = _record(store, request, clock)
    if comm["status"] in ("completed", "not-done"):
        return DeliveryOutcome("already-sent" if comm["status"] == "completed" else "failed", comm["id"])
    channel = channels.get(request.channel)
    if channel is None:
        return _finish(store, comm, clock, "not-done", reason=f"no channel named {request.channel!r} is configured")
    result = channel.send(
        OutgoingMessage(
            message_id=request.message_id,
            channel=request.channel,
            to=request.to,
            body=request.body,
            subject=request.subject,
            tags=request.tags,
        )
    )
    if result.status in ("sent", "duplicate"):
        return _finish(store, comm, clock, "completed", provider_id=result.provider_id)
    if result.status == "transient":
        raise TransientDeliveryError(result.reason or "transient channel failure")
    return _finish(store, comm, clock, "not-done", reason=result.reason or "permanent channel failure")


def _record(store: FhirStore, request: MessageRequest, clock: Clock) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": COMMUNICATION_SYSTEM, "value": request.message_id}],
        "status": "preparation",
        "category": [{"coding": [{"system": vigil_system("message-category"), "code": request.category}]}],
        "medium": [{"coding": [{"system": vigil_system("channel"), "code": request.channel}]}],
        # The payload is the PHI-minimal text actually sent (clinical.md §5.1).
        "payload": [{"contentString": request.body}],
    }
    if request.patient_ref:
        resource["subject"] = {"reference": request.patient_ref}
    if request.about_ref:
        resource["about"] = [{"reference": request.about_ref}]
    if request.recipient_ref:
        resource["recipient"] = [{"reference": request.recipient_ref}]
    result = store.create(resource, if_none_exist=f"identifier={COMMUNICATION_SYSTEM}|{request.message_id}")
    assert result.resource is not None
    return result.resource


def _finish(
    store: FhirStore,
    comm: dict[str, Any],
    clock: Clock,
    status: str,
    *,
    provider_id: str | None = None,
    reason: str | None = None,
) -> DeliveryOutcome:
    updated = dict(comm)
    updated["status"] = status
    if status == "completed":
        updated["sent"] = iso(clock.now())
        if provider_id:
            updated.setdefault("identifier", [])
            updated["identifier"] = [
                *comm.get("identifier", []),
                {"system": vigil_system("provider-message-id"), "value": provider_id},
            ]
    if reason:
        updated["statusReason"] = {"text": reason}
    store.update(updated)
    log.info("message %s %s via channel", comm["id"], status)
    return DeliveryOutcome(
        "sent" if status == "completed" else "failed", comm["id"], provider_id=provider_id, reason=reason
    )
