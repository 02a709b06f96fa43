"""The two interfaces of delivery: a `Channel` (what dispatch sends through) and a `Provider` (what
talks to one service). `notifications.channels.pipeline.GuardedChannel` turns a provider into a
channel by doing, once for every provider, what must hold whoever sends: consent, the address's
normal form, at most one send per message id, and no phone number in a stored reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

# What a channel carries; selects the template kind (`notifications.templates`) and how its
# address is normalized and checked. "file": a logical address kept as it is (the staff outbox).
ChannelKind = Literal["sms", "email", "file"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = ("sms", "email", "file")


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message ready to send.

    message_id is Vigil's deterministic id for this message (the Communication identifier
    value); channels pass it to providers that support idempotency and use it to refuse a
    second send of the same message where they can.
    """

    message_id: str
    channel: str  # what the request asked for: a channel kind ("sms", "email") or a channel name
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
    name: str  # the configured name (the channels mapping's key, the send ledger's key prefix)

    def send(self, message: OutgoingMessage) -> SendResult:
        ...


@dataclass(frozen=True)
class ProviderResult:
    """What one call to a provider came to, in the terms the send pipeline needs:

    accepted     - the provider took the message (provider_id when it gave one)
    duplicate    - the provider says it already has this message (nothing new went out)
    refused      - certainly not sent, and sending again will not help (bad recipient, auth, config)
    unavailable  - certainly not sent, worth trying again (throttled, 5xx, could not connect)
    in-doubt     - the request may have reached the provider and its answer was lost
    """

    outcome: Literal["accepted", "duplicate", "refused", "unavailable", "in-doubt"]
    provider_id: str | None = None
    reason: str | None = None  # Vigil's words: what failed, with the provider's status code
    code: str | None = None
    detail: str | None = None  # the provider's own words; scrubbed by the pipeline, kept after the reason
    retry_after_s: float | None = None


# How a provider keeps one message from going out twice:
# "none"     - it does not (ACS SMS makes a new repeatability id per call; SMTP has none): the send
#              ledger claims every message id first, and an in-doubt send is never repeated
# "provider" - it de-duplicates by a key Vigil derives from the message id (ACS Email's operation
#              id): the ledger, when there is one, only saves a second call; in doubt, send again
# "self"     - the adapter refuses a second send itself and answers "duplicate" (the file outbox)
Idempotency = Literal["none", "provider", "self"]


class Provider(Protocol):
    """One service's adapter: calls the provider once and maps its answer; no policy of its own."""

    idempotency: Idempotency

    def send(self, message: OutgoingMessage) -> ProviderResult:
        ...


class OptOutChecker(Protocol):
    """Whether a number has opted out of SMS (`notifications.consent.SmsConsentRegistry`)."""

    def is_opted_out(self, phone_e164: str) -> bool:
        ...
