"""The `Channel` interface every delivery channel implements (one module per channel, as in apprise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message ready to send.

    message_id is Vigil's deterministic id for this message (the Communication identifier
    value); channels pass it to providers that support idempotency and use it to refuse a
    second send of the same message where they can.
    """

    message_id: str
    channel: str  # "sms" | "email" | "outbox" ...
    to: str  # phone number (E.164), email address, or a logical address for the outbox
    body: str
    subject: str | None = None
    html: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # alert | reminder | notification | consent. "consent" marks the STOP/START/HELP replies,
    # the only SMS allowed to a number that has opted out (FCC 24-18 allows one confirmation).
    category: str | None = None


@dataclass(frozen=True)
class SendResult:
    """What a channel reports. status:
    sent       - accepted by the provider; provider_id set when the provider gave one
    duplicate  - this message_id was already sent by this channel; nothing sent again
    transient  - failed, worth retrying later (throttled, 5xx, network)
    permanent  - failed for good for this recipient on this channel (try the next channel)
    """

    status: Literal["sent", "duplicate", "transient", "permanent"]
    provider_id: str | None = None
    reason: str | None = None
    retry_after_s: float | None = None
    # A short machine-readable reason: opted-out, in-doubt, in-flight, invalid-recipient,
    # throttled, provider-error, auth, config ... (reason keeps the provider's own words).
    code: str | None = None


class Channel(Protocol):
    name: str

    def send(self, message: OutgoingMessage) -> SendResult:
        ...


class OptOutChecker(Protocol):
    """Whether a number has opted out of SMS (`notifications.consent.SmsConsentRegistry`)."""

    def is_opted_out(self, phone_e164: str) -> bool:
        ...
