"""Send one message exactly once: record it as a Communication, send it, record the outcome.

The Communication carries a deterministic identifier (DESIGN §7, `message_id_for`). Its status is
the outbox state:
preparation  -> recorded, not yet known to be sent
completed    -> the channel accepted it (provider id kept)
not-done     -> the channel refused it for good (reason kept)
A re-delivered request finds the Communication already `completed` or `not-done` and sends
nothing. A crash between send and record leaves it in `preparation`; the retry sends again
through the channel, whose send pipeline refuses a second send of the same message id
(`notifications.channels.pipeline`: the send ledger, or the provider's own idempotency).

Transient failures keep the Communication in `preparation` and count the attempt on it
(extensions `urn:vigil:delivery-attempts`, `urn:vigil:next-attempt`), then raise
`TransientDeliveryError` carrying when to retry; after `max_attempts` the message is given up
(`not-done`). A permanent failure (or giving up) moves on to the request's `fallbacks` in order:
each fallback is its own message with its own deterministic id, so a replay walks the same
chain and sends nothing twice. A failure a provider reports later (a delivery report) walks on
through `deliver_fallback`, from the plan the Communication keeps (`notifications.fallback_plan`).

The caller may decide that a message must not go out at all (the patient's quiet hours, an alert
nobody needs any more): `record_not_sent` / `deliver_fallback(..., withhold=Withhold(reason, code))`
record its Communication `not-done` under its own key without calling a channel. Such a
Communication is final: a replay of the chain (a re-delivered report, a sweep) stops there and
neither sends it nor walks on to the channels after it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any, Literal

from common.clock import Clock, iso
from common.codes import vigil_system
from fhirstore.port import FhirStore
from notifications.channels.base import Channel, OutgoingMessage, SendResult
from notifications.communications import (
    ATTEMPTS_EXT,
    COMMUNICATION_SYSTEM,
    FAILURE_SYSTEM,
    NEXT_ATTEMPT_EXT,
    PROVIDER_MESSAGE_ID_SYSTEM,
    WITHHELD_SYSTEM,
    attempts_of,
    is_withheld,
    medium_of,
    next_attempt_at,
    reason_text,
    status_reason,
)
from notifications.fallback_plan import pending_fallback, plan_extension
from notifications.message_request import (
    DeliveryOutcome,
    Fallback,
    MessageRequest,
    TransientDeliveryError,
    Withhold,
    message_id_for,
)

# What callers of the outbox lifecycle use, importable from here as from the modules that hold it.
__all__ = [
    "COMMUNICATION_SYSTEM", "FAILURE_SYSTEM", "WITHHELD_SYSTEM", "DeliveryOutcome", "Fallback", "MessageRequest",
    "TransientDeliveryError", "Withhold", "attempts_of", "backoff", "deliver", "deliver_fallback", "is_withheld",
    "medium_of", "message_id_for", "next_attempt_at", "record_not_sent",
]

log = logging.getLogger(__name__)


def backoff(attempt: int, *, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    """Wait after the `attempt`-th transient failure: 30 s, 1 min, 2 min, ... capped at an hour."""
    return timedelta(seconds=min(cap_s, base_s * 2 ** max(0, attempt - 1)))


def deliver(store: FhirStore, channels: dict[str, Channel], request: MessageRequest, clock: Clock) -> DeliveryOutcome:
    comm = _record(store, request, clock)
    if comm["status"] == "completed":
        return DeliveryOutcome("already-sent", comm["id"], channel=request.channel)
    if comm["status"] == "not-done":
        if is_withheld(comm):
            # Decided not to send: final, so the channels after it are not tried either.
            return DeliveryOutcome("withheld", comm["id"], reason=reason_text(comm), channel=request.channel)
        # Failed for good earlier; a replay walks on to the same fallback (which is idempotent too).
        return _fall_back(store, channels, request, clock, comm["id"], reason_text(comm))
    not_before = next_attempt_at(comm)
    if not_before is not None and clock.now() < not_before:
        # A re-delivered request inside the backoff (or the provider's Retry-After): not yet.
        raise TransientDeliveryError(reason_text(comm) or "waiting to retry", communication_id=comm["id"],
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
        return DeliveryOutcome(status, comm["id"], reason=reason_text(comm), channel=request.channel)
    if attempts_of(comm) > 0:
        # Already tried: a channel may have taken it before a crash, or it waits for a retry. Not
        # recorded as withheld (that could misstate a message that went out); left as it is.
        return DeliveryOutcome("retry", comm["id"], reason=reason_text(comm), channel=request.channel)
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
    updated["statusReason"] = status_reason(result.reason or "transient channel failure", result.code)
    store.update(updated)
    log.info("message %s attempt %d failed transiently (%s)", comm["id"], attempt, result.code or "transient")


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
    plan = plan_extension(request)
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
                {"system": PROVIDER_MESSAGE_ID_SYSTEM, "value": provider_id},
            ]
    if reason:
        updated["statusReason"] = status_reason(reason, code, system)
    store.update(updated)
    log.info("message %s %s via channel", comm["id"], status)
    return DeliveryOutcome(
        "sent" if status == "completed" else "failed", comm["id"], provider_id=provider_id, reason=reason,
        channel=channel,
    )


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
