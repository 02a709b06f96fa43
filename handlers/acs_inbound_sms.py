"""Inbound SMS to Vigil's number: consent keywords (STOP / START / HELP) and `ACK <code>`.

A keyword's consent change is recorded first, then answered once (`consent_stop/_start/_help`),
keyed by the inbound message id (`inbound:<messageId>|reply`), so a re-delivered text is answered
once; `ACK <code>` acknowledges the alert (`AcsEventDeps.ack_replies`) and wrong codes lock the
number out for a while (`notifications.ack_lockout`). Free text is not a command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from handlers.acs_delivery_reports import publish_best_effort, publish_if_failed
from handlers.acs_event_model import (
    AckReply,
    AcsEvent,
    AcsEventDeps,
    AcsOutcome,
    InvalidAcsEvent,
    instant_field,
    sender_number,
    text_field,
)
from notifications.ack_lockout import COUNTED_REASONS, SenderState
from notifications.communications import COMMUNICATION_SYSTEM
from notifications.consent import (
    OPT_OUT_KEYWORDS_ES,
    InboundOutcome,
    classify,
    find_patient_by_phone,
    handle_inbound_sms,
)
from notifications.dispatch import deliver
from notifications.message_request import DeliveryOutcome, MessageRequest, message_id_for
from notifications.preferences import PreferenceError, patient_recipient
from notifications.templates import Rendered, TemplateError
from notifications.workflow_events import ack_locked_out

log = logging.getLogger(__name__)

_REPLY_FOR_KIND = {"opt-out": "consent_stop", "opt-in": "consent_start", "help": "consent_help"}
_SPANISH_WORDS = OPT_OUT_KEYWORDS_ES | {"AYUDA"}  # answer these in Spanish when the patient is unknown


def sms_received(event: AcsEvent, payload: Any, deps: AcsEventDeps) -> AcsOutcome:
    data = event.data
    message_id = text_field(data, "messageId", event.event_type)
    sender = sender_number(text_field(data, "from", event.event_type), deps.consent.default_region, event.event_type)
    text = data.get("message")
    if text is not None and not isinstance(text, str):
        raise InvalidAcsEvent(f"{event.event_type}: data.message must be text")
    # The time the patient's phone sent it orders STOP against START; arrival time would not.
    received_at = (instant_field(data.get("receivedTimestamp"), f"{event.event_type}: data.receivedTimestamp")
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
    published = publish_if_failed(deps, reply)
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
    published = publish_best_effort(announce) if announce is not None else ()
    published += publish_if_failed(deps, outcome)
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
