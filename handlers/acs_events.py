"""Azure Communication Services events: inbound SMS (STOP / START / HELP, ACK) and delivery reports.

Event types handled (Event Grid or CloudEvents envelope; everything else is ignored):

| eventType                                            | what Vigil does                                     |
|------------------------------------------------------|-----------------------------------------------------|
| Microsoft.Communication.SMSReceived                  | consent keywords: record the opt-out/opt-in first,  |
|                                                      | then reply once (`consent_stop/_start/_help`);      |
|                                                      | `ACK <code>` acknowledges the alert by SMS          |
|                                                      | (`handlers.acknowledge`), answered once (`ack_*`);  |
|                                                      | wrong codes lock the number out for a while         |
|                                                      | (`notifications.ack_lockout`)                       |
| Microsoft.Communication.SMSDeliveryReportReceived    | the report is recorded on its `Communication`       |
| Microsoft.Communication.EmailDeliveryReportReceived  | same; a failed delivery sends the message's next    |
|                                                      | channel, or records why not                         |
|                                                      | (`notifications.fallback_policy`), then publishes   |
|                                                      | `Vigil.Message.Failed`                              |

Events arrive at least once and out of order. The consent record orders keywords by the time they
were received (`notifications.consent`); replies are keyed by the inbound message id
(`inbound:<messageId>|reply`), so a re-delivered STOP or ACK is answered once. A malformed event is
dead-lettered with a reason that names the field; log lines never carry a phone number or text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from common.clock import Clock, parse_instant
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from handlers.acknowledge import CodeAckResult
from ingest.deadletter import DeadLetterSink
from ingest.poison import payload_bytes
from notifications.ack_lockout import COUNTED_REASONS, AckSenderLimit, SenderState
from notifications.acs_reports import DELIVERY_REPORT_TYPES, InvalidDeliveryReport, parse_acs_delivery_report
from notifications.channels.base import Channel
from notifications.channels.ledger import SendLedger
from notifications.communications import COMMUNICATION_SYSTEM, FAILURE_SYSTEM, medium_of
from notifications.consent import (
    OPT_OUT_KEYWORDS_ES,
    InboundOutcome,
    InvalidPhoneNumber,
    SmsConsentRegistry,
    classify,
    find_patient_by_phone,
    handle_inbound_sms,
    normalize_e164,
)
from notifications.delivery_reports import apply_delivery_report
from notifications.dispatch import deliver
from notifications.fallback_policy import fall_back_after_report
from notifications.message_request import DeliveryOutcome, MessageRequest, message_id_for
from notifications.preferences import PreferenceDefaults, PreferenceError, patient_recipient
from notifications.templates import Rendered, TemplateError, TemplateLibrary
from notifications.workflow_events import (
    WorkflowEventError,
    WorkflowPublisher,
    ack_locked_out,
    message_failed,
)

log = logging.getLogger(__name__)

SMS_RECEIVED = "Microsoft.Communication.SMSReceived"
HANDLED_TYPES = frozenset({SMS_RECEIVED, *DELIVERY_REPORT_TYPES})
# The reply each consent outcome asks for; used to resume a reply whose first attempt did not finish.
_REPLY_FOR_KIND = {"opt-out": "consent_stop", "opt-in": "consent_start", "help": "consent_help"}
_CODE_CHARS = re.compile(r"[^a-z0-9\-_.]+")
_SPANISH_WORDS = OPT_OUT_KEYWORDS_ES | {"AYUDA"}  # answer these in Spanish when the patient is unknown


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
                    _instant(payload.get(time_field), f"{event_type}: {time_field!r}"), data)


def handle_acs_event(payload: Any, deps: AcsEventDeps) -> AcsOutcome:
    try:
        event = parse_acs_event(payload)
        if event is None:
            return AcsOutcome("ignored")
        if event.event_type == SMS_RECEIVED:
            return _sms_received(event, payload, deps)
        return _delivery_report(event, deps)
    except (InvalidAcsEvent, InvalidDeliveryReport) as exc:
        _park(deps, payload, "invalid_acs_event", str(exc))
        return AcsOutcome("dead-lettered")


# -- inbound SMS --------------------------------------------------------------------------------

def _sms_received(event: AcsEvent, payload: Any, deps: AcsEventDeps) -> AcsOutcome:
    data = event.data
    message_id = _text(data, "messageId", event.event_type)
    sender = _sender(_text(data, "from", event.event_type), deps.consent.default_region, event.event_type)
    text = data.get("message")
    if text is not None and not isinstance(text, str):
        raise InvalidAcsEvent(f"{event.event_type}: data.message must be text")
    # The time the patient's phone sent it orders STOP against START; arrival time would not.
    received_at = (_instant(data.get("receivedTimestamp"), f"{event.event_type}: data.receivedTimestamp")
                   or event.time or deps.clock.now())
    patient_ref = find_patient_by_phone(deps.store, sender)
    inbound = handle_inbound_sms(deps.consent, sender, text, received_at=received_at, patient_ref=patient_ref)
    if inbound.kind is None:
        # Free text is not a command; nothing to record or answer (no care-team inbox yet).
        log.info("inbound sms %s: no keyword", message_id)
        return AcsOutcome("not-a-keyword")
    if inbound.kind == "ack":
        return _ack(AckReply(message_id, sender, inbound.argument, received_at), deps)
    key = f"inbound:{message_id}|reply"
    template = inbound.reply_template or _unfinished_reply(deps.store, key, inbound)
    log.info("inbound sms %s: %s (changed=%s)", message_id, inbound.kind, inbound.changed)
    if template is None:
        return AcsOutcome(inbound.kind, inbound.changed)
    reply = _reply(deps, key, template, sender, patient_ref, text)
    published = _publish_if_failed(deps, reply)
    return AcsOutcome(inbound.kind, inbound.changed, reply, reply.communication_id, published)


def _unfinished_reply(store: FhirStore, key: str, inbound: InboundOutcome) -> str | None:
    """The reply a previous delivery of this event decided on but may not have finished.

    The consent write comes first, so a re-delivery after a transient send failure finds the state
    already changed and `handle_inbound_sms` asks for no reply; the reply's Communication, recorded
    before the send, says one was due. (A crash between the consent write and that record loses the
    confirmation; the opt-out itself always holds.)"""
    message_id = message_id_for(key)
    found = store.search("Communication", {"identifier": f"{COMMUNICATION_SYSTEM}|{message_id}"}).resources
    return _REPLY_FOR_KIND.get(str(inbound.kind)) if found else None


def _reply(deps: AcsEventDeps, key: str, template: str, sender: str, patient_ref: str | None,
           text: str | None) -> DeliveryOutcome:
    rendered = deps.templates.render(template, "sms", _locale(deps, patient_ref, text),
                                     {"org_name": deps.org_name, "contact_phone": deps.contact_phone})
    # category "consent": the one kind of SMS an opted-out number may still get (the confirmation).
    # A transient failure raises TransientDeliveryError: the event is retried, and the retry
    # resumes this reply (see _unfinished_reply) without sending it twice.
    return deliver(deps.store, deps.channels, MessageRequest(
        key=key, channel=deps.sms_channel, to=sender, body=rendered.body, patient_ref=patient_ref,
        recipient_ref=patient_ref, category="consent", tags={"template": template}), deps.clock)


def _locale(deps: AcsEventDeps, patient_ref: str | None, text: str | None) -> str:
    if patient_ref:
        try:
            patient = deps.store.read("Patient", patient_ref.partition("/")[2])
            return patient_recipient(patient, deps.defaults).locale
        except (ResourceNotFound, ResourceGone, PreferenceError):
            pass  # a consent answer must not fail over a preference; fall back below
    keyword = classify(text)
    return "es" if keyword is not None and keyword.word in _SPANISH_WORDS else deps.defaults.locale


def _ack(reply: AckReply, deps: AcsEventDeps) -> AcsOutcome:
    limit = deps.ack_limit
    if limit is not None:
        state = limit.state(reply.sender)
        # Locked out: not looked up (a correct code is refused too) and not answered; only the
        # text that caused the lockout is (re-)answered, once, under its own key.
        if state.locked(deps.clock.now()) and state.locked_by != reply.message_id:
            log.info("inbound sms %s: ack not processed, the number is locked out", reply.message_id)
            return AcsOutcome("ack-locked-out")
    answer = deps.ack_replies(reply)
    template = answer.template
    announce: Callable[[], tuple[str, ...]] | None = None
    if limit is not None and answer.outcome == "refused" and answer.reason in COUNTED_REASONS:
        failure = limit.record_failure(reply.sender, reply.message_id)
        if failure.status == "already-locked":  # another instance locked it out meanwhile
            return AcsOutcome("ack-locked-out")
        if failure.status == "locked":
            template = "ack_locked"
            state = failure.state
            announce = lambda: _announce_lockout(deps, state)  # noqa: E731
    elif limit is not None and answer.outcome != "refused":
        limit.clear(reply.sender)
    rendered = _render_reply(deps, template, answer.locale, answer.code)
    # Keyed by the inbound message like the consent replies: a re-delivered ACK is answered once
    # (the acknowledgement itself is idempotent; a re-run finds the Task already accepted).
    outcome = deliver(deps.store, deps.channels, MessageRequest(
        key=f"inbound:{reply.message_id}|reply", channel=deps.sms_channel, to=reply.sender, body=rendered.body,
        patient_ref=answer.patient, about_ref=answer.about, recipient_ref=answer.actor, category="notification",
        tags={"template": template}), deps.clock)
    log.info("inbound sms %s: ack %s", reply.message_id, answer.outcome)
    published = _publish_best_effort(announce) if announce is not None else ()
    published += _publish_if_failed(deps, outcome)
    return AcsOutcome("ack", answer.changed, outcome, outcome.communication_id, published)


def _render_reply(deps: AcsEventDeps, template: str, locale: str, code: str | None) -> Rendered:
    """The reply text; from the shipped template when a customized one cannot be rendered."""
    context = {"org_name": deps.org_name, "ack_code": code}
    try:
        return deps.templates.render(template, "sms", locale, context)
    except TemplateError as exc:
        log.warning("reply template %s could not be rendered (%s); the shipped one is used", template,
                    type(exc).__name__)
        return deps.templates.shipped().render(template, "sms", locale, context)


def _announce_lockout(deps: AcsEventDeps, state: SenderState) -> tuple[str, ...]:
    if state.record is None or state.locked_since is None or state.locked_until is None:
        return ()
    limits = deps.ack_limit.limits if deps.ack_limit is not None else None
    event = ack_locked_out(lockout=state.record, failures=limits.max_failures if limits else 0,
                           locked_for_s=int((state.locked_until - state.locked_since).total_seconds()),
                           at=state.locked_since)
    deps.workflow.publish([event])
    return (event.event_type,)


# -- delivery reports ---------------------------------------------------------------------------

def _delivery_report(event: AcsEvent, deps: AcsEventDeps) -> AcsOutcome:
    report = parse_acs_delivery_report(event.event_type, event.data)
    sms_channel = deps.channels.get(deps.sms_channel)
    recorded = apply_delivery_report(deps.store, report, clock=deps.clock, ledger=deps.ledger,
                                     channel_name=sms_channel.name if sms_channel is not None else deps.sms_channel)
    if recorded.communication_id is None:
        return AcsOutcome("unknown-message")
    published: tuple[str, ...] = ()
    fallback: DeliveryOutcome | None = None
    held_until: datetime | None = None
    # Only a permanent failure status that leaves the message not delivered; a stale failure after
    # "Delivered" or an unknown status is recorded, nothing more.
    if recorded.failed:
        comm = deps.store.read("Communication", recorded.communication_id)
        reason = _CODE_CHARS.sub("-", report.status.lower()).strip("-") or "undelivered"
        # The patient's next channel first: it must not wait for the workflow topic. Runs on every
        # delivery of the report (idempotent by key): a crash after the failure was recorded still
        # sends the fallback when the report comes again. A transient channel failure raises
        # TransientDeliveryError, so the report is retried at the channel's time.
        result = fall_back_after_report(deps.store, deps.channels, comm, deps.clock, deps.defaults)
        fallback, held_until = result.outcome, result.held_until
        published = _publish_best_effort(lambda: _publish_failed(deps, comm, medium_of(comm) or report.kind, reason))
        if fallback is not None:
            published += _publish_best_effort(lambda: _publish_if_failed(deps, fallback))
    return AcsOutcome("delivery-report", recorded.changed, communication_id=recorded.communication_id,
                      published=published, fallback=fallback, fallback_held_until=held_until)


def _publish_best_effort(publish: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
    """A failed delivery's workflow event, without failing the report: the fallback is already
    decided and a topic outage must not have the report retried for it (logged, type only)."""
    try:
        return publish()
    except Exception as exc:
        log.warning("workflow event for a failed message not published: %s", type(exc).__name__)
        return ()


def _publish_if_failed(deps: AcsEventDeps, outcome: DeliveryOutcome) -> tuple[str, ...]:
    if outcome.status != "failed":
        return ()
    comm = deps.store.read("Communication", outcome.communication_id)
    codes = [c.get("code") for c in (comm.get("statusReason") or {}).get("coding", [])
             if c.get("system") == FAILURE_SYSTEM]
    return _publish_failed(deps, comm, outcome.channel or deps.sms_channel, codes[0] if codes else "failed")


def _publish_failed(deps: AcsEventDeps, comm: dict[str, Any], channel: str, reason: str) -> tuple[str, ...]:
    about = [a.get("reference") for a in comm.get("about", []) if a.get("reference")]
    patient = (comm.get("subject") or {}).get("reference")
    core = partial(message_failed, communication=f"Communication/{comm['id']}", channel=_code(channel),
                   reason_code=_code(reason), at=deps.clock.now())
    try:
        event = core(patient=patient if str(patient).startswith("Patient/") else None,
                     about=about[0] if about else None)
    except WorkflowEventError:
        event = core()  # a reference of an unexpected shape: keep the core facts
    # Raised on failure: this event is the only trace a subscriber gets, so the inbound-SMS paths
    # have the host retry it (the id is derived from the message, so subscribers de-duplicate a
    # second copy). A delivery report does not wait for it (`_publish_best_effort`).
    deps.workflow.publish([event])
    log.info("message %s failed (%s); workflow event published", comm["id"], reason)
    return (event.event_type,)


def _code(text: str) -> str:
    return _CODE_CHARS.sub("-", text.lower()).strip("-")[:64] or "unknown"


# -- parsing helpers ----------------------------------------------------------------------------

def _text(data: dict[str, Any], name: str, event_type: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAcsEvent(f"{event_type}: data.{name} is missing or empty")
    return value.strip()


def _sender(raw: str, default_region: str, event_type: str) -> str:
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


def _instant(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return parse_instant(str(value))
    except ValueError:
        raise InvalidAcsEvent(f"{where} is not an ISO 8601 time with an offset") from None


def _park(deps: AcsEventDeps, payload: Any, reason: str, detail: str) -> None:
    body, note = payload_bytes(payload)  # kept even with integers too long for decimal or deep nesting
    deps.dead_letters.add(topic=deps.topic, reason=reason, detail=detail + (f" ({note})" if note else ""),
                          payload=body, source="acs-events")
    log.warning("ACS event dead-lettered: %s", reason)
