"""Send one message exactly once: record it as a Communication, send it, record the outcome.

The Communication carries a deterministic identifier (DESIGN §7). Its status is the outbox state:
preparation  -> recorded, not yet known to be sent
completed    -> the channel accepted it (provider id kept)
not-done     -> the channel refused it for good (reason kept)
A re-delivered request finds the Communication already `completed` or `not-done` and sends
nothing. A crash between send and record leaves it in `preparation`; the retry sends again
through the channel, which must refuse a second send of the same message id (the outbox channel
does by construction; ACS SMS and SMTP claim the id in their send ledger first and answer
"duplicate", ACS Email passes an operation id derived from it).

Transient failures keep the Communication in `preparation` and count the attempt on it
(extensions `urn:vigil:delivery-attempts`, `urn:vigil:next-attempt`), then raise
`TransientDeliveryError` carrying when to retry; after `max_attempts` the message is given up
(`not-done`). A permanent failure (or giving up) moves on to the request's `fallbacks` in order:
each fallback is its own message with its own deterministic id, so a replay walks the same
chain and sends nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from common.clock import Clock, iso, parse_instant
from common.codes import vigil_system
from fhirstore.port import FhirStore
from notifications.channels.base import Channel, OutgoingMessage, SendResult

log = logging.getLogger(__name__)

COMMUNICATION_SYSTEM = vigil_system("communication")
ATTEMPTS_EXT = vigil_system("delivery-attempts")
NEXT_ATTEMPT_EXT = vigil_system("next-attempt")
FAILURE_SYSTEM = vigil_system("send-failure")
DEFAULT_MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class Fallback:
    """The next way to reach the same recipient, with its own rendering for that channel."""

    channel: str
    to: str
    body: str
    subject: str | None = None
    html: str | None = None


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
    category: str = "alert"  # alert | reminder | notification | consent
    tags: dict[str, str] = field(default_factory=dict)
    html: str | None = None
    fallbacks: tuple[Fallback, ...] = ()  # tried in order after a permanent failure
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # transient failures before giving up on this channel

    @property
    def message_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    def fallback_request(self) -> MessageRequest | None:
        """The request for the first fallback (its own key, so its own Communication), or None."""
        if not self.fallbacks:
            return None
        nxt, rest = self.fallbacks[0], self.fallbacks[1:]
        return replace(
            self,
            key=f"{self.key}|fallback:{nxt.channel}",
            channel=nxt.channel,
            to=nxt.to,
            body=nxt.body,
            subject=nxt.subject,
            html=nxt.html,
            fallbacks=rest,
        )


@dataclass(frozen=True)
class DeliveryOutcome:
    status: Literal["sent", "already-sent", "failed", "retry"]
    communication_id: str
    provider_id: str | None = None
    reason: str | None = None
    channel: str | None = None  # the channel this outcome is about (a fallback's, after a fallback)
    failed_before: tuple[str, ...] = ()  # Communication ids that failed for good before this one


class TransientDeliveryError(RuntimeError):
    """The channel failed in a way worth retrying; the caller's retry policy decides when.

    `retry_at` is when the message should be tried again (from the provider's Retry-After or the
    backoff schedule); `attempt` counts the attempts made so far on this channel."""

    def __init__(self, reason: str, *, communication_id: str | None = None, attempt: int = 1,
                 retry_at: datetime | None = None) -> None:
        super().__init__(reason)
        self.communication_id = communication_id
        self.attempt = attempt
        self.retry_at = retry_at


def backoff(attempt: int, *, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    """Wait after the `attempt`-th transient failure: 30 s, 1 min, 2 min, ... capped at an hour."""
    return timedelta(seconds=min(cap_s, base_s * 2 ** max(0, attempt - 1)))


def attempts_of(comm: dict[str, Any]) -> int:
    return next((int(e.get("valueInteger", 0)) for e in comm.get("extension", []) if e.get("url") == ATTEMPTS_EXT), 0)


def next_attempt_at(comm: dict[str, Any]) -> datetime | None:
    """When a `preparation` Communication that failed transiently may be tried again (None: now)."""
    for e in comm.get("extension", []):
        if e.get("url") == NEXT_ATTEMPT_EXT and e.get("valueDateTime"):
            return parse_instant(e["valueDateTime"])
    return None


def deliver(store: FhirStore, channels: dict[str, Channel], request: MessageRequest, clock: Clock) -> DeliveryOutcome:
    comm = _record(store, request, clock)
    if comm["status"] == "completed":
        return DeliveryOutcome("already-sent", comm["id"], channel=request.channel)
    if comm["status"] == "not-done":
        # Failed for good earlier; a replay walks on to the same fallback (which is idempotent too).
        return _fall_back(store, channels, request, clock, comm["id"], _reason_text(comm))
    not_before = next_attempt_at(comm)
    if not_before is not None and clock.now() < not_before:
        # A re-delivered request inside the backoff (or the provider's Retry-After): not yet.
        raise TransientDeliveryError(_reason_text(comm) or "waiting to retry", communication_id=comm["id"],
                                     attempt=attempts_of(comm), retry_at=not_before)
    channel = channels.get(request.channel)
    if channel is None:
        _finish(store, comm, clock, "not-done", reason=f"no channel named {request.channel!r} is configured",
                code="config")
        return _fall_back(store, channels, request, clock, comm["id"], f"no channel named {request.channel!r}")
    result = channel.send(
        OutgoingMessage(
            message_id=request.message_id,
            channel=request.channel,
            to=request.to,
            body=request.body,
            subject=request.subject,
            html=request.html,
            tags=request.tags,
            category=request.category,
        )
    )
    if result.status in ("sent", "duplicate"):
        return _finish(store, comm, clock, "completed", provider_id=result.provider_id, channel=request.channel)
    if result.status == "transient":
        attempt = attempts_of(comm) + 1
        reason = result.reason or "transient channel failure"
        if attempt < request.max_attempts:
            _count_attempt(store, comm, clock, attempt, result)
            wait = backoff(attempt)
            if result.retry_after_s is not None:
                wait = max(wait, timedelta(seconds=result.retry_after_s))
            raise TransientDeliveryError(reason, communication_id=comm["id"], attempt=attempt,
                                         retry_at=clock.now() + wait)
        reason = f"gave up after {attempt} attempts: {reason}"
        result = SendResult("permanent", reason=reason, code=result.code or "gave-up")
    _finish(store, comm, clock, "not-done", reason=result.reason or "permanent channel failure", code=result.code,
            channel=request.channel)
    return _fall_back(store, channels, request, clock, comm["id"], result.reason or "permanent channel failure")


def _fall_back(store: FhirStore, channels: dict[str, Channel], request: MessageRequest, clock: Clock,
               failed_id: str, reason: str | None) -> DeliveryOutcome:
    nxt = request.fallback_request()
    if nxt is None:
        return DeliveryOutcome("failed", failed_id, reason=reason, channel=request.channel)
    log.info("message %s failed on %s; trying %s", failed_id, request.channel, nxt.channel)
    outcome = deliver(store, channels, nxt, clock)
    return replace(outcome, failed_before=(failed_id, *outcome.failed_before))


def _reason_text(comm: dict[str, Any]) -> str | None:
    return (comm.get("statusReason") or {}).get("text")


def _count_attempt(store: FhirStore, comm: dict[str, Any], clock: Clock, attempt: int, result: SendResult) -> None:
    wait = backoff(attempt)
    if result.retry_after_s is not None:
        wait = max(wait, timedelta(seconds=result.retry_after_s))
    updated = dict(comm)
    keep = [e for e in comm.get("extension", []) if e.get("url") not in (ATTEMPTS_EXT, NEXT_ATTEMPT_EXT)]
    updated["extension"] = [
        *keep,
        {"url": ATTEMPTS_EXT, "valueInteger": attempt},
        {"url": NEXT_ATTEMPT_EXT, "valueDateTime": iso(clock.now() + wait)},
    ]
    updated["statusReason"] = _status_reason(result.reason or "transient channel failure", result.code)
    store.update(updated)
    log.info("message %s attempt %d failed transiently (%s)", comm["id"], attempt, result.code or "transient")


def _status_reason(reason: str, code: str | None) -> dict[str, Any]:
    value: dict[str, Any] = {"text": reason}
    if code:
        value["coding"] = [{"system": FAILURE_SYSTEM, "code": code}]
    return value


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
    code: str | None = None,
    channel: str | None = None,
) -> DeliveryOutcome:
    updated = dict(comm)
    updated["status"] = status
    updated["extension"] = [e for e in comm.get("extension", []) if e.get("url") != NEXT_ATTEMPT_EXT]
    if not updated["extension"]:
        del updated["extension"]
    if status == "completed":
        updated["sent"] = iso(clock.now())
        updated.pop("statusReason", None)
        if provider_id:
            updated.setdefault("identifier", [])
            updated["identifier"] = [
                *comm.get("identifier", []),
                {"system": vigil_system("provider-message-id"), "value": provider_id},
            ]
    if reason:
        updated["statusReason"] = _status_reason(reason, code)
    store.update(updated)
    log.info("message %s %s via channel", comm["id"], status)
    return DeliveryOutcome(
        "sent" if status == "completed" else "failed", comm["id"], provider_id=provider_id, reason=reason,
        channel=channel,
    )


# -- delivery reports ------------------------------------------------------------------------

SMS_DELIVERY_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"
EMAIL_DELIVERY_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"
DELIVERY_STATUS_EXT = vigil_system("delivery-status")


@dataclass(frozen=True)
class DeliveryReport:
    """What a delivery report did. `failed` reports mark the Communication `not-done`; the caller
    may then re-run the original `deliver()` request, which walks on to its fallback channel."""

    communication_id: str | None
    delivered: bool
    status: str  # the provider's status word (Delivered, Failed, Bounced, ...)
    changed: bool


def apply_delivery_report(store: FhirStore, event: dict[str, Any], *, ledger: Any = None,
                          sms_channel_name: str = "sms") -> DeliveryReport:
    """Record an ACS delivery report (Event Grid or CloudEvents envelope) on its Communication.

    SMS reports carry our message id as `tag`; email reports carry the operation id, which is the
    Communication's provider message id. A "Delivered" report for an SMS the ledger holds as
    in-doubt resolves it (pass the SMS send ledger as `ledger`)."""
    event_type = event.get("eventType") or event.get("type")
    data = event.get("data") or {}
    if event_type == SMS_DELIVERY_REPORT:
        status = str(data.get("deliveryStatus") or "")
        delivered = status.lower() == "delivered"
        failed = status.lower() == "failed"
        tag = data.get("tag")
        if tag and ledger is not None and delivered:
            ledger.mark_sent(f"{sms_channel_name}:{tag}", data.get("messageId"), _now_from(data, "receivedTimestamp"))
        query = {"identifier": f"{COMMUNICATION_SYSTEM}|{tag}"} if tag else \
            {"identifier": f"{vigil_system('provider-message-id')}|{data.get('messageId')}"}
        detail = ((data.get("deliveryStatusDetails") or "") if isinstance(data.get("deliveryStatusDetails"), str)
                  else "")
        when = data.get("receivedTimestamp")
    elif event_type == EMAIL_DELIVERY_REPORT:
        status = str(data.get("status") or "")
        delivered = status == "Delivered"
        failed = not delivered  # Failed, Bounced, Suppressed, Quarantined, FilteredSpam (platform-notes §5)
        query = {"identifier": f"{vigil_system('provider-message-id')}|{data.get('messageId')}"}
        detail = str((data.get("deliveryStatusDetails") or {}).get("statusMessage") or "")
        when = data.get("deliveryAttemptTimeStamp")
    else:
        raise ValueError(f"not an ACS delivery report: event type {event_type!r}")
    found = store.search("Communication", query).resources
    if not found:
        log.info("delivery report for an unknown message (%s)", status or "no status")
        return DeliveryReport(None, delivered, status, False)
    comm = found[0]
    updated = dict(comm)
    keep = [e for e in comm.get("extension", []) if e.get("url") != DELIVERY_STATUS_EXT]
    updated["extension"] = [*keep, {"url": DELIVERY_STATUS_EXT, "valueCode": status.lower() or "unknown"}]
    if delivered:
        if comm["status"] != "completed":
            # An in-doubt send that did go out after all.
            updated["status"] = "completed"
            updated.pop("statusReason", None)
        if when:
            updated["received"] = when
    elif failed and comm["status"] == "completed":
        from notifications.channels.acs_sms import scrub

        updated["status"] = "not-done"
        reason = f"the provider reported {status or 'a failure'}" + (f": {scrub(detail, 200)}" if detail else "")
        updated["statusReason"] = _status_reason(reason, "undelivered")
    changed = updated != comm
    if changed:
        store.update(updated)
        log.info("message %s delivery report: %s", comm["id"], status or "unknown")
    return DeliveryReport(comm["id"], delivered, status, changed)


def _now_from(data: dict[str, Any], key: str) -> datetime:
    try:
        return parse_instant(str(data.get(key)))
    except (TypeError, ValueError):
        from datetime import UTC

        return datetime.now(UTC)
