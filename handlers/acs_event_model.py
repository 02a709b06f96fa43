"""An Azure Communication Services event as `handlers.acs_events` reads it: the envelope, its fields,
what the handler needs (`AcsEventDeps`, built by `runtime.bootstrap.acs_deps`) and what it did.

Event Grid and CloudEvents envelopes are both accepted
(https://learn.microsoft.com/azure/event-grid/communication-services-sms-events); a field Vigil
cannot use raises `InvalidAcsEvent`, naming the field and never its value (it may be a phone number).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.clock import Clock, parse_instant
from fhirstore.port import FhirStore
from handlers.acknowledge import CodeAckResult
from ingest.deadletter import DeadLetterSink
from notifications.ack_lockout import AckSenderLimit
from notifications.acs_reports import DELIVERY_REPORT_TYPES
from notifications.channels.base import Channel
from notifications.channels.ledger import SendLedger
from notifications.consent import InvalidPhoneNumber, SmsConsentRegistry, normalize_e164
from notifications.message_request import DeliveryOutcome
from notifications.preferences import PreferenceDefaults
from notifications.templates import TemplateLibrary
from notifications.workflow_events import WorkflowPublisher

SMS_RECEIVED = "Microsoft.Communication.SMSReceived"
HANDLED_TYPES = frozenset({SMS_RECEIVED, *DELIVERY_REPORT_TYPES})


class InvalidAcsEvent(ValueError):
    """An ACS event Vigil cannot act on; the message names the field, never its value."""


@dataclass(frozen=True)
class AcsEvent:
    id: str
    event_type: str
    subject: str
    time: datetime | None
    data: dict[str, Any]


@dataclass(frozen=True)
class AckReply:
    """An `ACK <code>` text, for `AcsEventDeps.ack_replies` to resolve to an alert."""

    message_id: str
    sender: str  # E.164
    code: str | None
    received_at: datetime


@dataclass(frozen=True)
class AcsEventDeps:
    store: FhirStore
    channels: dict[str, Channel]
    clock: Clock
    consent: SmsConsentRegistry
    templates: TemplateLibrary
    workflow: WorkflowPublisher
    dead_letters: DeadLetterSink
    org_name: str
    contact_phone: str  # the program's help line, quoted in the HELP answer
    # Resolves `ACK <code>` to an alert and acknowledges it (`handlers.acknowledge.acknowledge_by_code`);
    # says which reply the sender gets. May raise to have the event retried.
    ack_replies: Callable[[AckReply], CodeAckResult]
    sms_channel: str = "sms"  # the channel replies go out on (and whose ledger delivery reports resolve)
    ledger: SendLedger | None = None  # the SMS send ledger, so a "Delivered" report can settle an in-doubt send
    defaults: PreferenceDefaults = field(default_factory=PreferenceDefaults)
    topic: str = "eg:on_acs_event"  # where a dead letter is replayed to
    # The per-number limit on wrong `ACK` codes (notifications.ack_lockout); None: no limit (tests).
    ack_limit: AckSenderLimit | None = None


@dataclass(frozen=True)
class AcsOutcome:
    """What the handler did. action: opt-out | opt-in | help | ack | ack-locked-out (not looked up,
    not answered) | not-a-keyword | delivery-report | unknown-message | ignored | dead-lettered."""

    action: str
    changed: bool = False
    reply: DeliveryOutcome | None = None
    communication_id: str | None = None
    published: tuple[str, ...] = ()  # workflow event types published
    # After a failed delivery report: the next channel's outcome ("sent" now, "already-sent" on a
    # re-delivered report, "failed" when no channel is left, "withheld" when recorded not sent:
    # quiet hours, an alert no longer open). None: nothing to fall back to, or held (below).
    fallback: DeliveryOutcome | None = None
    # A patient alert's fallback left for the alert sweep to send when the patient's quiet hours end.
    fallback_held_until: datetime | None = None


def parse_acs_event(payload: Any) -> AcsEvent | None:
    """The event in an Event Grid or CloudEvents envelope; None for an event type Vigil ignores."""
    if not isinstance(payload, dict):
        raise InvalidAcsEvent(f"the event must be a JSON object, not {type(payload).__name__}")
    cloud = "specversion" in payload
    type_field, time_field = ("type", "time") if cloud else ("eventType", "eventTime")
    event_type = payload.get(type_field)
    if not isinstance(event_type, str) or not event_type:
        raise InvalidAcsEvent(f"the event has no {type_field!r}")
    if event_type not in HANDLED_TYPES:
        return None
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidAcsEvent(f"{event_type}: the event has no 'id'")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InvalidAcsEvent(f"{event_type}: 'data' must be a JSON object")
    return AcsEvent(event_id, event_type, str(payload.get("subject") or ""),
                    instant_field(payload.get(time_field), f"{event_type}: {time_field!r}"), data)


# -- fields ----------------------------------------------------------------------------

def text_field(data: dict[str, Any], name: str, event_type: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAcsEvent(f"{event_type}: data.{name} is missing or empty")
    return value.strip()


def sender_number(raw: str, default_region: str, event_type: str) -> str:
    """ACS sends numbers in international form, with or without the '+' (https://learn.microsoft.com/azure/event-grid/communication-services-sms-events)."""
    try:
        return normalize_e164(raw, default_region=default_region)
    except InvalidPhoneNumber:
        pass
    digits = raw.strip().lstrip("+")
    try:
        return normalize_e164("+" + digits)
    except InvalidPhoneNumber as exc:
        raise InvalidAcsEvent(f"{event_type}: data.from is not a phone number: {exc}") from None


def instant_field(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return parse_instant(str(value))
    except ValueError:
        raise InvalidAcsEvent(f"{where} is not an ISO 8601 time with an offset") from None
