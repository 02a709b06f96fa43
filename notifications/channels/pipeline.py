"""The guarded send pipeline: what every message goes through, whichever provider sends it.

    address    the recipient in its kind's normal form (SMS: E.164; email: one address), or a
               permanent "invalid-recipient" before anything else happens
    consent    no SMS to a number that texted STOP, except the STOP/START/HELP confirmation itself
               (category "consent"; FCC 24-18 allows the one confirmation)
    ledger     the message id claimed in the send ledger before the provider is called, so a
               replayed or concurrent send goes out once (`notifications.channels.ledger`)
    provider   one call; its `ProviderResult` settles the claim: sent, released (certainly not
               sent) or in doubt (never sent again unless the provider de-duplicates)
    redaction  the provider's words kept as the reason only with phone numbers masked

A provider adapter (`Provider`) only calls its service and maps the answer; it never checks
consent, normalizes, claims or scrubs. Nothing here logs an address, a body or a reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta

from common.clock import Clock, SystemClock
from notifications.channels.base import (
    ChannelKind,
    OptOutChecker,
    OutgoingMessage,
    Provider,
    ProviderResult,
    SendResult,
)
from notifications.channels.ledger import DEFAULT_LEASE, SendLedger, claim_or_refusal
from notifications.consent import InvalidPhoneNumber, normalize_e164
from notifications.provider_replies import scrub

log = logging.getLogger(__name__)

EMAIL_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def ledger_key(channel_name: str, message_id: str) -> str:
    """What a channel claims a message under in the send ledger (also what a delivery report settles)."""
    return f"{channel_name}:{message_id}"


class MissingLedger(ValueError):
    """A provider without idempotency of its own was configured without a send ledger."""


@dataclass
class GuardedChannel:
    """A `Channel`: `provider` behind the pipeline above, under its configured `name`."""

    name: str
    kind: ChannelKind
    provider: Provider
    ledger: SendLedger | None = None
    opt_outs: OptOutChecker | None = None  # checked for every SMS; None: no consent registry (tests)
    clock: Clock = field(default_factory=SystemClock)
    default_region: str = "US"  # for national SMS numbers (NANP) without a country code
    lease: timedelta = DEFAULT_LEASE

    def __post_init__(self) -> None:
        if self.provider.idempotency == "none" and self.ledger is None:
            raise MissingLedger(f"channel {self.name!r}: needs a send ledger (its provider is not idempotent; "
                                "see notifications.channels.ledger)")

    def __repr__(self) -> str:
        return f"GuardedChannel(name={self.name!r}, kind={self.kind!r}, provider={self.provider!r})"

    def send(self, message: OutgoingMessage) -> SendResult:
        refusal, to = self._address(message)
        if refusal is not None:
            return refusal
        if self.kind == "sms" and not message.body.strip():
            return SendResult("permanent", reason="the SMS body is empty", code="empty-body")
        if self._opted_out(message, to):
            log.info("sms %s not sent: recipient opted out", message.message_id)
            return SendResult("permanent", reason="the recipient has opted out of SMS (STOP)", code="opted-out")
        key = ledger_key(self.name, message.message_id)
        idempotency = self.provider.idempotency
        ledger = self.ledger if idempotency != "self" else None
        if ledger is not None:
            refusal = claim_or_refusal(ledger, key, self.clock.now(), self.lease,
                                       resend_in_doubt=idempotency == "provider")
            if refusal is not None:
                return refusal
        try:
            result = self.provider.send(replace(message, to=to))
        except Exception as exc:
            # An adapter that raised mid-call: the provider may have taken the message.
            result = ProviderResult("in-doubt", reason=f"unexpected error while sending: {type(exc).__name__}")
        return self._settle(ledger, key, message, result)

    def _address(self, message: OutgoingMessage) -> tuple[SendResult | None, str]:
        if self.kind == "sms":
            try:
                return None, normalize_e164(message.to, default_region=self.default_region)
            except InvalidPhoneNumber as exc:
                return SendResult("permanent", reason=str(exc), code="invalid-recipient"), message.to
        if self.kind == "email" and not EMAIL_ADDRESS.match(message.to or ""):
            return SendResult("permanent", reason="the recipient is not an email address",
                              code="invalid-recipient"), message.to
        return None, message.to

    def _opted_out(self, message: OutgoingMessage, to: str) -> bool:
        return (self.kind == "sms" and message.category != "consent" and self.opt_outs is not None
                and self.opt_outs.is_opted_out(to))

    def _settle(self, ledger: SendLedger | None, key: str, message: OutgoingMessage,
                result: ProviderResult) -> SendResult:
        reason = scrub(result.reason) or None
        if result.detail:
            reason = f"{reason or 'the provider answered'}: {scrub(result.detail, 200)}"
        if result.outcome in ("accepted", "duplicate"):
            if ledger is not None:
                ledger.mark_sent(key, result.provider_id, self.clock.now())
            log.info("%s %s %s", self.kind, message.message_id,
                     "sent" if result.outcome == "accepted" else "already with the provider")
            return SendResult("sent" if result.outcome == "accepted" else "duplicate", provider_id=result.provider_id)
        if result.outcome == "in-doubt" and self.provider.idempotency == "none":
            assert ledger is not None  # __post_init__: a provider without idempotency has a ledger
            ledger.mark_in_doubt(key, reason or "outcome unknown", self.clock.now())
            log.warning("%s %s outcome unknown; not sent again", self.kind, message.message_id)
            return SendResult("permanent", reason=f"{reason or 'outcome unknown'}; not sent again to avoid a duplicate",
                              code="in-doubt")
        if ledger is not None:
            ledger.release(key)  # certainly not sent, or the provider de-duplicates a resend
        if result.outcome == "refused":
            log.info("%s %s refused by the provider (%s)", self.kind, message.message_id, result.code or "refused")
            return SendResult("permanent", provider_id=result.provider_id, reason=reason, code=result.code)
        # unavailable, or in doubt at a provider that de-duplicates: safe to try again
        return SendResult("transient", reason=reason, retry_after_s=result.retry_after_s, code=result.code)
