"""Composing alert messages: the patient's, and a clinician's escalation notice; each send idempotent.

Patient messages are rendered from the sandboxed templates (`alert_<severity>`) in the patient's
language, on their preferred channel with the others as fallbacks, and carry no reading,
condition or name. A high-severity alert, or one whose priority is asap or stat (an instruction
that cannot wait), goes at once; others wait for the end of the patient's quiet hours (the alert
sweep sends them then). A clinician's notice carries a signed acknowledgement link and, once the
Task has one, its `ACK <code>` line (`handlers.escalations` stores the code first).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from handlers.messaging import ACK_PURPOSE, ACK_TTL, OPENING, Messaging, focus_of, patient_message_key
from handlers.patient_file import PatientFile
from notifications.ack_codes import ack_code_of
from notifications.dispatch import Fallback, MessageRequest, TransientDeliveryError, Withhold, deliver, record_not_sent
from notifications.escalation import Step
from notifications.preferences import Recipient, send_at, staff_recipients
from notifications.templates import Rendered, TemplateError

log = logging.getLogger(__name__)


def notify_patient(m: Messaging, patient: PatientFile, *, episode_key: str, severity: str, phase: str,
                   urgent: bool | None = None) -> int:
    """Send the patient's alert message now if allowed; returns messages sent (0 if deferred).

    `urgent` (default: high severity) sends it in quiet hours too: the rule's
    `Rule.patient_message_now`, true for an instruction that cannot wait (treat a low glucose now)."""
    urgent = severity == "high" if urgent is None else urgent
    recipient = patient.recipient
    if recipient is None:
        log.warning("alert for a patient the store does not have; no patient message")
        return 0
    if not recipient.contacts:
        return 0
    now = m.clock.now()
    quiet = send_at(recipient, category="alert", urgent=urgent, now=now) > now
    if quiet and phase == OPENING:
        return 0  # quiet hours: the alert sweep sends the opening message when they end
    request = compose(m, recipient, template=f"alert_{severity}", key=patient_message_key(episode_key, phase),
                      context={"org_name": m.org_name, "contact_phone": m.contact_phone, "link": ""},
                      about=f"DetectedIssue/{episode_key}", patient_ref=patient.ref, channels=None,
                      category="alert", urgent=urgent)
    if request is None:
        return 0
    # The alert sweep re-runs the opening message of every open episode (a fallback may wait for it).
    request = replace(request, sweep_resends=phase == OPENING)
    if quiet:
        # A repeat of an alert the patient already had: the sweep re-sends only opening messages,
        # so it is recorded as not sent rather than left to vanish.
        record_not_sent(m.store, request, m.clock, Withhold(
            "patient alert update not sent: the patient's quiet hours; the opening alert reached them", "quiet-hours"))
        return 0
    try:
        return int(deliver(m.store, m.channels, request, m.clock).status == "sent")
    except TransientDeliveryError:
        # The provider is briefly unavailable: the Communication keeps its retry time and the
        # alert sweep sends it again (same key). The alert itself must not wait for the provider.
        log.info("patient alert message deferred after a transient channel failure")
        return 0


def notify_staff(m: Messaging, task: dict[str, Any], step: Step) -> int:
    """Tell the clinicians holding the step's roles (the care-team fallback address when nobody
    does); returns messages sent. Raises TransientDeliveryError when a provider is briefly down."""
    patient_ref = task["for"]["reference"]
    staff = staff_recipients(m.store, patient_ref, list(step.roles), now=m.clock.now(), defaults=m.defaults)
    severity = severity_word(task)
    if not staff:
        # Nobody holds the role: the message still goes somewhere a person reads, never nowhere.
        outcome = deliver(m.store, m.channels, MessageRequest(
            key=f"{step.notify_key}|fallback", channel="outbox", to=m.staff_fallback_address,
            body=f"{m.org_name}: {severity} alert needs review (escalation level {step.level}); "
                 f"no {'/'.join(step.roles)} on the care team. {focus_of(task)}.",
            patient_ref=patient_ref, about_ref=focus_of(task), category="escalation"), m.clock)
        return int(outcome.status == "sent")
    sent = 0
    for person in staff:
        token = m.tokens.issue(purpose=ACK_PURPOSE, subject=f"Task/{task['id']}", actor=person.ref, ttl=ACK_TTL)
        context = {"org_name": m.org_name, "severity": severity, "level": step.level,
                   "ack_link": f"{m.public_base_url.rstrip('/')}/api/ack/{token}",
                   "ack_code": ack_code_of(task)}  # None: no code stored, so the template leaves the line out
        request = compose(m, person, template=step.template or "escalation", key=f"{step.notify_key}|{person.ref}",
                          context=context, about=focus_of(task), patient_ref=patient_ref, channels=step.channels,
                          category="escalation")
        if request is not None:
            sent += int(deliver(m.store, m.channels, request, m.clock).status == "sent")
    return sent


def compose(m: Messaging, recipient: Recipient, *, template: str, key: str, context: dict[str, Any], about: str,
            patient_ref: str, channels: tuple[str, ...] | None, category: str,
            urgent: bool | None = None) -> MessageRequest | None:
    """The message to `recipient` on their first usable contact, the others as fallbacks, each
    rendered for its channel; None when there is nothing to send (a rendering failure is recorded
    as a Communication not sent, with the reason)."""
    contacts = [c for c in recipient.contacts_for(channels) if c.channel in m.channels]
    rendered = []
    failure: TemplateError | None = None
    for contact in contacts:
        try:
            r = _render(m, template, contact.channel, recipient.locale, context, category)
        except TemplateError as exc:
            failure = failure or exc
            continue
        rendered.append((contact, r))
    tags = {"template": template}
    if not rendered:
        if failure is not None and contacts:
            # Recorded, not dropped: the Communication says which template failed and why.
            record_not_sent(m.store, MessageRequest(
                key=key, channel=contacts[0].channel, to=contacts[0].address, body="(not rendered)",
                patient_ref=patient_ref, about_ref=about, recipient_ref=recipient.ref, category=category, tags=tags,
                urgent=urgent), m.clock, Withhold(f"the message could not be rendered: {failure}", "template_error"))
        return None
    (first, r0), rest = rendered[0], rendered[1:]
    if r0.template != template:
        tags = {"template": r0.template, "template_failed": template}
    return MessageRequest(
        key=key, channel=first.channel, to=first.address, body=r0.body, subject=r0.subject, html=r0.html,
        patient_ref=patient_ref, about_ref=about, recipient_ref=recipient.ref, category=category,
        tags=tags, urgent=urgent,
        fallbacks=tuple(Fallback(c.channel, c.address, r.body, r.subject, r.html) for c, r in rest),
    )


def _render(m: Messaging, template: str, channel: str, locale: str, context: dict[str, Any],
            category: str) -> Rendered:
    """The message text; a staff escalation whose customized template fails is rendered from the
    shipped template instead (docs/notifications.md "Template limits"): nobody is left unpaged
    because a template was edited badly. Other messages raise TemplateError."""
    try:
        return m.templates.render(template, channel, locale, context)
    except TemplateError as exc:
        log.warning("template %s (%s) could not be rendered: %s", template, channel, type(exc).__name__)
        shipped = m.templates.shipped()
        if category != "escalation":
            raise
        name = template if template in shipped.catalog.templates else "escalation"
        if shipped is m.templates and name == template:
            raise
        log.warning("escalation rendered from the shipped template %s instead", name)
        return shipped.render(name, channel, locale, context)


def severity_word(task: dict[str, Any]) -> str:
    """The word staff messages show: "STAT" for the most dangerous alerts (docs/rules.md §5)."""
    return {"stat": "stat", "asap": "high", "urgent": "high"}.get(task.get("priority", ""), "moderate")
