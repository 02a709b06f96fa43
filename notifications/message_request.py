"""What is asked to be sent (`MessageRequest`, its `Fallback`s) and what came of it
(`DeliveryOutcome`), before any store or channel is involved.

A message's id is a hash of its key (`message_id_for`): the Communication identifier value
(DESIGN §7), the send ledger's claim and the providers' idempotency keys all derive from it, so
a replayed request is the same message everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

# For requests and stored plans that do not say (urgent=None): the template that marks an urgent alert.
URGENT_TEMPLATES = frozenset({"alert_high"})
DEFAULT_MAX_ATTEMPTS = 6


def message_id_for(key: str) -> str:
    """The deterministic message id of the message with this key (32 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def fallback_key(key: str, channel: str) -> str:
    """The key of the fallback on `channel` of the message with `key` (its own Communication)."""
    return f"{key}|fallback:{channel}"


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
    """One message to one recipient about one thing, before it is recorded.

    `channel` is a channel kind (`sms`, `email`: what a recipient's contact names) or a configured
    channel's name (`notifications.channels.registry`)."""

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
    # Whether a sweep runs this request again while what it is about stays open (an episode's
    # opening patient alert, re-run by the alert sweep): a fallback due in the patient's quiet
    # hours can then wait for that run instead of being withheld (`notifications.fallback_policy`).
    sweep_resends: bool = False

    @property
    def is_urgent(self) -> bool:
        if self.urgent is not None:
            return self.urgent
        return self.category == "alert" and self.tags.get("template") in URGENT_TEMPLATES

    @property
    def message_id(self) -> str:
        return message_id_for(self.key)

    def fallback_request(self) -> MessageRequest | None:
        """The request for the first fallback (its own key, so its own Communication), or None."""
        if not self.fallbacks:
            return None
        nxt, rest = self.fallbacks[0], self.fallbacks[1:]
        return replace(
            self,
            key=fallback_key(self.key, nxt.channel),
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
