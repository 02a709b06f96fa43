"""Alert messages: the patient's message and the staff escalation chain, each send idempotent.

Patient messages are rendered from the sandboxed templates (`alert_<severity>`) in the patient's
language, on their preferred channel with the others as fallbacks, and carry no reading,
condition or name. A high-severity alert, or one whose priority is asap or stat (an instruction
that cannot wait), goes at once; others wait for the end of the patient's quiet hours (the alert
sweep sends them then). Staff are reached through the episode's Task: the
escalation chain notifies level 1 at once and the escalation sweep advances it while nobody
acknowledges. Every message key derives from the episode and the step, so a replay sends nothing.

Before the first staff message goes out, the Task gets its acknowledgement code (`ACK <code>` by
SMS; `handlers.acknowledge.acknowledge_by_code`): derived from the Task id with the token key, so
a re-run derives the same code, and written with If-Match before any message quotes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from common.clock import Clock
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.channels.base import Channel
from notifications.dispatch import (
    DeliveryOutcome,
    Fallback,
    MessageRequest,
    TransientDeliveryError,
    Withhold,
    deliver,
    record_not_sent,
)
from notifications.escalation import (
    Chain,
    Step,
    ack_code_from_mac,
    ack_code_of,
    advance,
    chain_of,
    with_ack_code,
    with_chain,
)
from notifications.preferences import (
    PreferenceDefaults,
    Recipient,
    patient_recipient,
    send_at,
    staff_recipients,
)
from notifications.templates import Rendered, TemplateError, TemplateLibrary
from notifications.tokens import SignedTokens
from notifications.workflow_events import WorkflowEvent, WorkflowPublisher, episode_opened, escalated

log = logging.getLogger(__name__)

ACK_PURPOSE = "ack"
ACK_TTL = timedelta(hours=24)
DEFAULT_CHAINS = {"high": "crisis", "moderate": "standard"}


@dataclass(frozen=True)
class Messaging:
    """What sending alert messages needs (built once by the composition root)."""

    store: FhirStore
    channels: dict[str, Channel]
    clock: Clock
    templates: TemplateLibrary
    chains: dict[str, Chain]
    tokens: SignedTokens
    workflow: WorkflowPublisher
    org_name: str = "Vigil Clinic"
    contact_phone: str = ""
    public_base_url: str = "http://127.0.0.1:7071"
    staff_fallback_address: str = "care-team"  # when a patient has no care team with the role
    defaults: PreferenceDefaults = field(default_factory=PreferenceDefaults)


OPENING = "open"  # the phase of an episode's first patient message (the alert sweep re-sends it)


def patient_message_key(episode_key: str, phase: str) -> str:
    """The message key of an episode's patient message in `phase` (`OPENING`, or an update's)."""
    return f"{episode_key}|{phase}|patient"


def notify_patient(m: Messaging, *, episode_key: str, patient_ref: str, severity: str, phase: str,
                   urgent: bool | None = None) -> int:
    """Send the patient's alert message now if allowed; returns messages sent (0 if deferred).

    `urgent` (default: high severity) sends it in quiet hours too: the rule's
    `Rule.patient_message_now`, true for an instruction that cannot wait (treat a low glucose now)."""
    urgent = severity == "high" if urgent is None else urgent
    try:
        patient = m.store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        log.warning("alert for a patient the store does not have; no patient message")
        return 0
    recipient = patient_recipient(patient, m.defaults, now=m.clock.now())
    if not recipient.contacts:
        return 0
    quiet = send_at(recipient, category="alert", urgent=urgent, now=m.clock.now()) > m.clock.now()
    if quiet and phase == OPENING:
        return 0  # quiet hours: the alert sweep sends the opening message when they end
    request = _request(m, recipient, template=f"alert_{severity}", key=patient_message_key(episode_key, phase),
                       context={"org_name": m.org_name, "contact_phone": m.contact_phone, "link": ""},
                       about=f"DetectedIssue/{episode_key}", patient_ref=patient_ref, channels=None,
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


def start_escalation(m: Messaging, task: dict[str, Any], *, severity: str, chain_id: str | None) -> int:
    """Run the first step of the Task's escalation chain (level 1 is notified at once)."""
    chain = m.chains.get(chain_id or DEFAULT_CHAINS.get(severity, ""))
    if chain is None:
        return 0
    return run_escalation_step(m, task, chain)


def run_escalation_step(m: Messaging, task: dict[str, Any], chain: Chain) -> int:
    """Advance one Task's chain if due: notify, persist the Task (If-Match), publish the event."""
    # The caller's copy can be minutes old (a sweep works through the due Tasks it found): read it
    # again, so an alert acknowledged meanwhile pages nobody. If-Match on the write below covers
    # the milliseconds left between this read and the send.
    try:
        task = m.store.read("Task", task["id"])
    except (ResourceNotFound, ResourceGone):
        return 0
    step = advance(task, chain, m.clock.now())
    if step.action in ("wait", "done"):
        return 0
    if (step.roles and ack_code_of(task) is None) or chain_of(task) is None:
        recorded = _prepare_task(m, task, chain)
        if recorded is None:
            return 0  # the Task is gone
        if recorded is not task:  # a new version: the step is worked out again from it
            task = recorded
            step = advance(task, chain, m.clock.now())
            if step.action in ("wait", "done"):
                return 0
    try:
        sent = _notify_staff(m, task, step, chain) if step.roles else 0
    except TransientDeliveryError:
        # Keep the Task where it was: the next escalation sweep runs this same step again, and
        # the messages that did go out are not resent (same keys).
        log.info("escalation step held back by a transient channel failure")
        return 0
    try:
        m.store.update(step.task, if_match=(task.get("meta") or {}).get("versionId"))
    except PreconditionFailed:
        # Another sweep (or an acknowledgement) changed the Task first; its step wins, and the
        # messages just sent were keyed by this step, so a rerun would not send them again.
        return sent
    if step.action == "notify" and step.level is not None:
        publish(m, escalated(detected_issue=_focus(task), patient=task["for"]["reference"], task=f"Task/{task['id']}",
                              level=step.level, roles=list(step.roles), at=m.clock.now()))
    return sent


def derive_ack_code(m: Messaging, task_id: str) -> str:
    """The Task's acknowledgement code: a MAC over its id with the current token key."""
    return ack_code_from_mac(m.tokens.derive(f"ack-code|Task/{task_id}"))


def _prepare_task(m: Messaging, task: dict[str, Any], chain: Chain) -> dict[str, Any] | None:
    """The Task with its chain and acknowledgement code stored before any message goes out
    (If-Match, like every Task write); None if it was deleted. With the chain recorded, a first
    step held back by a channel failure is picked up by the next sweep (the event that opened the
    episode is not retried: the episode is already open). A race re-reads and tries again."""
    for _ in range(3):
        updated, code_added = with_ack_code(task, derive_ack_code(m, task["id"]))
        updated, chain_added = with_chain(updated, chain.id)
        if not (code_added or chain_added):
            return task
        try:
            result = m.store.update(updated, if_match=(task.get("meta") or {}).get("versionId"))
        except PreconditionFailed:
            try:
                task = m.store.read("Task", task["id"])
            except (ResourceNotFound, ResourceGone):
                return None
            continue
        return result.resource if result.resource is not None else m.store.read("Task", task["id"])
    # Three writers in a row beat us: carry on without a stored code (the link still works) and
    # let the next sweep store it; the message just leaves the ACK line out.
    return task


def escalation_chain_of(m: Messaging, task: dict[str, Any]) -> Chain | None:
    return m.chains.get(chain_of(task) or "")


def publish_opened(m: Messaging, *, episode_key: str, patient_ref: str, rule_id: str, severity: str) -> None:
    publish(m, episode_opened(detected_issue=f"DetectedIssue/{episode_key}", patient=patient_ref, rule_id=rule_id,
                               severity=severity, at=m.clock.now()))


def _notify_staff(m: Messaging, task: dict[str, Any], step: Step, chain: Chain) -> int:
    patient_ref = task["for"]["reference"]
    staff = staff_recipients(m.store, patient_ref, list(step.roles), now=m.clock.now(), defaults=m.defaults)
    severity = _severity(task)
    sent = 0
    if not staff:
        # Nobody holds the role: the message still goes somewhere a person reads, never nowhere.
        outcome = deliver(m.store, m.channels, MessageRequest(
            key=f"{step.notify_key}|fallback", channel="outbox", to=m.staff_fallback_address,
            body=f"{m.org_name}: {severity} alert needs review (escalation level {step.level}); "
                 f"no {'/'.join(step.roles)} on the care team. {_focus(task)}.",
            patient_ref=patient_ref, about_ref=_focus(task), category="escalation"), m.clock)
        return int(outcome.status == "sent")
    for person in staff:
        token = m.tokens.issue(purpose=ACK_PURPOSE, subject=f"Task/{task['id']}", actor=person.ref, ttl=ACK_TTL)
        context = {"org_name": m.org_name, "severity": severity, "level": step.level,
                   "ack_link": f"{m.public_base_url.rstrip('/')}/api/ack/{token}",
                   "ack_code": ack_code_of(task)}  # None: no code stored, so the template leaves the line out
        request = _request(m, person, template=step.template or "escalation", key=f"{step.notify_key}|{person.ref}",
                           context=context, about=_focus(task), patient_ref=patient_ref, channels=step.channels,
                           category="escalation")
        if request is not None:
            sent += int(deliver(m.store, m.channels, request, m.clock).status == "sent")
    return sent


def _request(m: Messaging, recipient: Recipient, *, template: str, key: str, context: dict[str, Any], about: str,
             patient_ref: str, channels: tuple[str, ...] | None, category: str,
             urgent: bool | None = None) -> MessageRequest | None:
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


def _focus(task: dict[str, Any]) -> str:
    return str((task.get("focus") or {}).get("reference", ""))


def _severity(task: dict[str, Any]) -> str:
    # The word staff messages show: "STAT" for the most dangerous alerts (docs/rules.md §5).
    return {"stat": "stat", "asap": "high", "urgent": "high"}.get(task.get("priority", ""), "moderate")


def publish(m: Messaging, event: WorkflowEvent) -> None:
    try:
        m.workflow.publish([event])
    except Exception as exc:  # a workflow subscriber being down must not stop clinical alerting
        log.warning("workflow event not published: %s", type(exc).__name__)


__all__ = ["DeliveryOutcome", "Messaging", "notify_patient", "publish_opened", "run_escalation_step",
           "start_escalation"]
