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

Providers also report failures later: ACS accepts a send (the Communication is `completed`) and a
delivery report says `Failed` minutes after. So a message with fallbacks keeps, on its own
Communication, what the next channels need (`FALLBACK_PLAN_EXT`: the message key, the remaining
fallbacks' channel, address and rendered text); `apply_delivery_report` marks the message
`not-done` on a permanent failure status and `deliver_fallback` sends the first fallback under the
same key a synchronous failure uses (`<key>|fallback:<channel>`), so the two paths, a re-delivered
report and an out-of-order one can never send it twice.

The caller may decide that a fallback must not go out at all (the patient's quiet hours, an alert
nobody needs any more): `deliver_fallback(..., withhold=Withhold(reason, code))` records the
fallback's Communication `not-done` under that same key without calling a channel. Such a
Communication is final: a replay of the chain (a re-delivered report, a sweep) stops there and
neither sends it nor walks on to the channels after it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from common.clock import Clock, SystemClock, iso, parse_instant
from common.codes import vigil_system
from fhirstore.port import FhirStore
from notifications.channels.base import Channel, OutgoingMessage, SendResult
from notifications.channels.ledger import SendLedger

log = logging.getLogger(__name__)

COMMUNICATION_SYSTEM = vigil_system("communication")
ATTEMPTS_EXT = vigil_system("delivery-attempts")
NEXT_ATTEMPT_EXT = vigil_system("next-attempt")
FAILURE_SYSTEM = vigil_system("send-failure")
# On a Communication with fallbacks: what the next channels need once a delivery report says this
# one failed. It holds the text each fallback's own Communication will carry when it is sent, plus
# the recipient's address on that channel (the same value their Patient/PractitionerRole telecom
# holds in this store); never logged.
FALLBACK_PLAN_EXT = vigil_system("fallback-plan")
# statusReason coding of a message Vigil decided not to send (no channel was called), as opposed to
# FAILURE_SYSTEM, a channel's refusal: quiet-hours, alert-closed.
WITHHELD_SYSTEM = vigil_system("withheld")
# For requests and stored plans that do not say (urgent=None): the template that marks an urgent alert.
URGENT_TEMPLATES = frozenset({"alert_high"})
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
    # Whether a patient alert may reach the patient in their quiet hours. None: derived from the
    # tags (template `alert_high`, the high-severity patient alert); kept in the fallback plan.
    urgent: bool | None = None

    @property
    def is_urgent(self) -> bool:
        if self.urgent is not None:
            return self.urgent
        return self.category == "alert" and self.tags.get("template") in URGENT_TEMPLATES

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
    # withheld: recorded `not-done` by the caller's decision (`Withhold`); no channel was called.
    status: Literal["sent", "already-sent", "failed", "retry", "withheld"]
    communication_id: str
    provider_id: str | None = None
    reason: str | None = None
    channel: str | None = None  # the channel this outcome is about (a fallback's, after a fallback)
    failed_before: tuple[str, ...] = ()  # Communication ids that failed for good before this one


@dataclass(frozen=True)
class Withhold:
    """A caller's decision that a message must not be sent: why (`reason`, for people) and a short
    code (`quiet-hours`, `alert-closed`, ...), recorded as the Communication's statusReason."""

    reason: str
    code: str


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
        if is_withheld(comm):
            # Decided not to send: final, so the channels after it are not tried either.
            return DeliveryOutcome("withheld", comm["id"], reason=_reason_text(comm), channel=request.channel)
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


def is_withheld(comm: dict[str, Any]) -> bool:
    """Whether a Communication was recorded as not sent by decision (`Withhold`), not by a channel."""
    return comm.get("status") == "not-done" and any(
        c.get("system") == WITHHELD_SYSTEM for c in (comm.get("statusReason") or {}).get("coding", []))


def record_not_sent(store: FhirStore, request: MessageRequest, clock: Clock, withhold: Withhold) -> DeliveryOutcome:
    """Record `request` as not sent, for `withhold`'s reason, without calling a channel.

    The same record-then-finish as an unconfigured channel in `deliver()`, under the request's own
    key, so whatever later replays the request finds it decided. A message already sent stays sent
    ("already-sent"); one that already failed keeps its failure."""
    comm = _record(store, request, clock)
    if comm["status"] == "completed":
        return DeliveryOutcome("already-sent", comm["id"], channel=request.channel)
    if comm["status"] == "not-done":
        status: Literal["withheld", "failed"] = "withheld" if is_withheld(comm) else "failed"
        return DeliveryOutcome(status, comm["id"], reason=_reason_text(comm), channel=request.channel)
    if attempts_of(comm) > 0:
        # Already tried: a channel may have taken it before a crash, or it waits for a retry. Not
        # recorded as withheld (that could misstate a message that went out); left as it is.
        return DeliveryOutcome("retry", comm["id"], reason=_reason_text(comm), channel=request.channel)
    _finish(store, comm, clock, "not-done", reason=withhold.reason, code=withhold.code, system=WITHHELD_SYSTEM)
    log.info("message %s not sent (%s)", comm["id"], withhold.code)
    return DeliveryOutcome("withheld", comm["id"], reason=withhold.reason, channel=request.channel)


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


def _status_reason(reason: str, code: str | None, system: str = FAILURE_SYSTEM) -> dict[str, Any]:
    value: dict[str, Any] = {"text": reason}
    if code:
        value["coding"] = [{"system": system, "code": code}]
    return value


def _record(store: FhirStore, request: MessageRequest, clock: Clock) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": COMMUNICATION_SYSTEM, "value": request.message_id}],
        "status": "preparation",
        "category": [{"coding": [{"system": vigil_system("message-category"), "code": request.category}]}],
        "medium": [{"coding": [{"system": vigil_system("channel"), "code": request.channel}]}],
        # The payload is the PHI-minimal text actually sent (HIPAA minimum necessary, 45 CFR 164.502(b)).
        "payload": [{"contentString": request.body}],
    }
    if request.patient_ref:
        resource["subject"] = {"reference": request.patient_ref}
    if request.about_ref:
        resource["about"] = [{"reference": request.about_ref}]
    if request.recipient_ref:
        resource["recipient"] = [{"reference": request.recipient_ref}]
    plan = _plan_extension(request)
    if plan is not None:
        resource["extension"] = [plan]
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
    system: str = FAILURE_SYSTEM,
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
        updated["statusReason"] = _status_reason(reason, code, system)
    store.update(updated)
    log.info("message %s %s via channel", comm["id"], status)
    return DeliveryOutcome(
        "sent" if status == "completed" else "failed", comm["id"], provider_id=provider_id, reason=reason,
        channel=channel,
    )


# -- the fallback plan ----------------------------------------------------------------------

def _plan_extension(request: MessageRequest) -> dict[str, Any] | None:
    """The remaining fallbacks of `request`, as one complex extension (None without fallbacks).

    The key is kept whole (not only its hash) so that the fallback's key, and with it its
    Communication identifier, is exactly the one `fallback_request()` makes on a synchronous failure."""
    if not request.fallbacks:
        return None
    parts: list[dict[str, Any]] = [{"url": "key", "valueString": request.key},
                                   {"url": "max-attempts", "valueInteger": request.max_attempts},
                                   {"url": "urgent", "valueBoolean": request.is_urgent}]
    for name, value in request.tags.items():
        if name:
            tag = [{"url": "name", "valueString": name}] + ([{"url": "value", "valueString": value}] if value else [])
            parts.append({"url": "tag", "extension": tag})
    for fb in request.fallbacks:
        fields: list[dict[str, Any]] = [{"url": "channel", "valueCode": fb.channel}]
        # FHIR strings may not be empty: an absent part reads back as "" (to, body) or None.
        for part, text in (("to", fb.to), ("body", fb.body), ("subject", fb.subject), ("html", fb.html)):
            if text:
                fields.append({"url": part, "valueString": text})
        parts.append({"url": "fallback", "extension": fields})
    return {"url": FALLBACK_PLAN_EXT, "extension": parts}


def pending_fallback(comm: dict[str, Any]) -> MessageRequest | None:
    """The request for this Communication's first remaining fallback, exactly as a synchronous
    failure of the original request would build it (same key, so same Communication); None when
    the message had no fallbacks (or was recorded before plans were kept)."""
    plan = next((e for e in comm.get("extension", []) if e.get("url") == FALLBACK_PLAN_EXT), None)
    if plan is None:
        return None
    key: str | None = None
    max_attempts = DEFAULT_MAX_ATTEMPTS
    urgent: bool | None = None  # plans written before urgency was kept: derived from the tags
    tags: dict[str, str] = {}
    fallbacks: list[Fallback] = []
    for part in plan.get("extension", []):
        url = part.get("url")
        if url == "key":
            key = part.get("valueString")
        elif url == "max-attempts":
            max_attempts = int(part.get("valueInteger") or DEFAULT_MAX_ATTEMPTS)
        elif url == "urgent" and isinstance(part.get("valueBoolean"), bool):
            urgent = part["valueBoolean"]
        elif url == "tag":
            sub = _sub_values(part)
            if sub.get("name"):
                tags[sub["name"]] = sub.get("value") or ""
        elif url == "fallback":
            sub = _sub_values(part)
            if sub.get("channel"):
                fallbacks.append(Fallback(sub["channel"], sub.get("to") or "", sub.get("body") or "",
                                          sub.get("subject"), sub.get("html")))
    own_id = next((i.get("value") for i in comm.get("identifier", []) if i.get("system") == COMMUNICATION_SYSTEM),
                  None)
    original = MessageRequest(
        key=key or "", channel=medium_of(comm) or "", to="", body="",
        patient_ref=(comm.get("subject") or {}).get("reference"),
        about_ref=next((a.get("reference") for a in comm.get("about", []) if a.get("reference")), None),
        recipient_ref=next((r.get("reference") for r in comm.get("recipient", []) if r.get("reference")), None),
        category=_category_of(comm) or "alert", tags=tags, fallbacks=tuple(fallbacks), max_attempts=max_attempts,
        urgent=urgent)
    if not key or original.message_id != own_id:
        # A plan that does not belong to this Communication (edited by hand, copied): sending from
        # it could reach the wrong person, so nothing is sent and the reason is left in the log.
        log.warning("message %s has a fallback plan that does not match its identifier; no fallback sent",
                    comm.get("id"))
        return None
    return original.fallback_request()


def deliver_fallback(store: FhirStore, channels: dict[str, Channel], comm: dict[str, Any],
                     clock: Clock, *, withhold: Withhold | None = None) -> DeliveryOutcome | None:
    """Send the next channel of a message that failed for good after it was sent (a delivery report).

    Only a `not-done` Communication falls back. The fallback goes through `deliver()` under the key
    a synchronous failure would use, so however often this runs (re-delivered reports, the original
    request re-run by a sweep) the fallback is sent once; consent, retries and further fallbacks
    are `deliver()`'s as always. With `withhold` (the caller's decision) the fallback is recorded
    not sent under that key instead (`record_not_sent`), for good. None when there is nothing to
    fall back to."""
    if comm.get("status") != "not-done":
        return None
    nxt = pending_fallback(comm)
    if nxt is None:
        return None
    if withhold is not None:
        log.info("message %s was reported undelivered on %s; %s fallback withheld (%s)", comm.get("id"),
                 medium_of(comm), nxt.channel, withhold.code)
        outcome = record_not_sent(store, nxt, clock, withhold)
        return replace(outcome, failed_before=(comm["id"], *outcome.failed_before))
    log.info("message %s was reported undelivered on %s; trying %s", comm.get("id"), medium_of(comm), nxt.channel)
    outcome = deliver(store, channels, nxt, clock)
    return replace(outcome, failed_before=(comm["id"], *outcome.failed_before))


def _sub_values(extension: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for sub in extension.get("extension", []):
        value = next((v for k, v in sub.items() if k.startswith("value")), None)
        if sub.get("url") and value is not None:
            values[sub["url"]] = value
    return values


def medium_of(comm: dict[str, Any]) -> str | None:
    """The channel a Communication went out on (its `medium` code)."""
    return _first_code(comm.get("medium", []))


def _category_of(comm: dict[str, Any]) -> str | None:
    return _first_code(comm.get("category", []))


def _first_code(concepts: list[dict[str, Any]]) -> str | None:
    for concept in concepts:
        for coding in concept.get("coding", []):
            if coding.get("code"):
                return str(coding["code"])
    return None


# -- delivery reports ------------------------------------------------------------------------

SMS_DELIVERY_REPORT = "Microsoft.Communication.SMSDeliveryReportReceived"
EMAIL_DELIVERY_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"
DELIVERY_STATUS_EXT = vigil_system("delivery-status")
# The report statuses that mean "this message will not arrive" (lower case). Only these mark the
# message not sent and move on to a fallback; any other status (an intermediate or a new one) is
# recorded on the Communication and nothing else, so an unknown word never sends a second message.
# SMS: ACS reports Delivered or Failed; Expired is the carrier's "not delivered within the validity
# period" (final). Email: the documented values other than Delivered (https://learn.microsoft.com/azure/event-grid/communication-services-sms-events).
SMS_FAILURE_STATUSES = frozenset({"failed", "expired"})
EMAIL_FAILURE_STATUSES = frozenset({"failed", "bounced", "suppressed", "quarantined", "filteredspam"})


@dataclass(frozen=True)
class DeliveryReport:
    """What a delivery report did.

    `failed` is True when the message now stands as not delivered because the provider reported a
    permanent failure (also on a re-delivery of that report): the caller then announces the failure
    and calls `deliver_fallback`. A failure reported for a message already reported delivered is
    stale (reports arrive out of order) and changes nothing: delivered is final."""

    communication_id: str | None
    delivered: bool
    status: str  # the provider's status word (Delivered, Failed, Bounced, ...)
    changed: bool
    failed: bool = False


def is_permanent_failure(event_type: str, status: str) -> bool:
    """Whether a delivery report status means the message will not arrive (see the sets above)."""
    known = SMS_FAILURE_STATUSES if event_type == SMS_DELIVERY_REPORT else EMAIL_FAILURE_STATUSES
    return status.strip().lower() in known


def apply_delivery_report(store: FhirStore, event: dict[str, Any], *, ledger: SendLedger | None = None,
                          sms_channel_name: str = "sms", clock: Clock | None = None) -> DeliveryReport:
    """Record an ACS delivery report (Event Grid or CloudEvents envelope) on its Communication.

    SMS reports carry our message id as `tag`; email reports carry the operation id, which is the
    Communication's provider message id. A "Delivered" report for an SMS the ledger holds as
    in-doubt resolves it (pass the SMS send ledger as `ledger`)."""
    event_type = event.get("eventType") or event.get("type")
    data = event.get("data") or {}
    if event_type == SMS_DELIVERY_REPORT:
        status = str(data.get("deliveryStatus") or "")
        tag = data.get("tag")
        query = {"identifier": f"{COMMUNICATION_SYSTEM}|{tag}"} if tag else \
            {"identifier": f"{vigil_system('provider-message-id')}|{data.get('messageId')}"}
        detail = ((data.get("deliveryStatusDetails") or "") if isinstance(data.get("deliveryStatusDetails"), str)
                  else "")
        when = data.get("receivedTimestamp")
    elif event_type == EMAIL_DELIVERY_REPORT:
        status = str(data.get("status") or "")
        tag = None
        query = {"identifier": f"{vigil_system('provider-message-id')}|{data.get('messageId')}"}
        detail = str((data.get("deliveryStatusDetails") or {}).get("statusMessage") or "")
        when = data.get("deliveryAttemptTimeStamp")
    else:
        raise ValueError(f"not an ACS delivery report: event type {event_type!r}")
    delivered = status.strip().lower() == "delivered"
    failed = is_permanent_failure(event_type, status)
    if tag and ledger is not None and delivered:
        ledger.mark_sent(
            f"{sms_channel_name}:{tag}", data.get("messageId"), _now_from(data, "receivedTimestamp", clock)
        )
    found = store.search("Communication", query).resources
    if not found:
        log.info("delivery report for an unknown message (%s)", status or "no status")
        return DeliveryReport(None, delivered, status, False)
    comm = found[0]
    if failed and _reported_status(comm) == "delivered":
        log.info("message %s: a %s report after it was reported delivered; kept as delivered", comm["id"],
                 status)
        return DeliveryReport(comm["id"], False, status, False)
    updated = dict(comm)
    keep = [e for e in comm.get("extension", []) if e.get("url") != DELIVERY_STATUS_EXT]
    updated["extension"] = [*keep, {"url": DELIVERY_STATUS_EXT, "valueCode": _status_code(status)}]
    if delivered:
        if comm["status"] != "completed":
            # An in-doubt send that did go out after all (or a failure report that came first).
            updated["status"] = "completed"
            updated.pop("statusReason", None)
        if when:
            updated["received"] = when
    elif failed and comm["status"] in ("completed", "preparation"):
        # `preparation`: the provider took it but the send was never recorded (a crash between
        # the two); the report is the only word on it.
        from notifications.channels.acs_sms import scrub

        updated["status"] = "not-done"
        reason = f"the provider reported {status or 'a failure'}" + (f": {scrub(detail, 200)}" if detail else "")
        updated["statusReason"] = _status_reason(reason, "undelivered")
    changed = updated != comm
    if changed:
        store.update(updated)
        log.info("message %s delivery report: %s", comm["id"], status or "unknown")
    return DeliveryReport(comm["id"], delivered, status, changed,
                          failed=failed and updated["status"] == "not-done")


def _reported_status(comm: dict[str, Any]) -> str | None:
    return next((e.get("valueCode") for e in comm.get("extension", []) if e.get("url") == DELIVERY_STATUS_EXT),
                None)


def _status_code(status: str) -> str:
    # A FHIR code has no leading/trailing or doubled whitespace; the provider's word is kept otherwise.
    return "-".join(status.lower().split()) or "unknown"


def _now_from(data: dict[str, Any], key: str, clock: Clock | None) -> datetime:
    """The report's own time; without a readable one, the injected clock's."""
    try:
        return parse_instant(str(data.get(key)))
    except (TypeError, ValueError):
        return (clock or SystemClock()).now()
