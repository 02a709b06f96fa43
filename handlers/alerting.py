"""Turn a rule firing into an alert episode and its messages — every step idempotent.

Order matters for crash safety. Opening an episode writes the Task and Flag, sends the messages,
and writes the DetectedIssue LAST: the DetectedIssue is the marker that the episode was opened.
A crash anywhere before it leaves no marker, so the re-delivered event decides "open" again, finds
the Task and Flag already there (deterministic ids) and the messages already sent (deterministic
message keys), and writes the marker. A crash after it finds the episode open and suppresses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhirstore.batch_reads import Read, read_together
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from handlers.compose import notify_patient
from handlers.escalations import ready_to_escalate, start_escalation
from handlers.messaging import OPENING, Messaging, publish, publish_opened
from handlers.patient_file import PatientFile
from handlers.snooze import active_snooze
from notifications.dispatch import MessageRequest, deliver
from notifications.workflow_events import closed
from rules.episode_resources import (
    RULE_SYSTEM,
    close_episode,
    close_flag,
    open_episode,
    raise_task_priority,
    update_episode,
)
from rules.episodes import Decision, Episode, decide, episode_from_detected_issue
from rules.model import Rule
from rules.results import Firing

log = logging.getLogger(__name__)


@dataclass
class AlertOutcome:
    decision: Decision
    messages_sent: int = 0


def latest_episode(store: FhirStore, patient_ref: str, rule_id: str) -> tuple[dict[str, Any], Episode] | None:
    """The patient's most recent episode of a rule (open or closed), read from its DetectedIssue."""
    found = store.search("DetectedIssue", {"patient": patient_ref, "code": f"{RULE_SYSTEM}|{rule_id}",
                                           "_sort": "-_lastUpdated", "_count": "1"})
    if not found.resources:
        return None
    issue = found.resources[0]
    return issue, episode_from_detected_issue(issue)


def act_on_firing(m: Messaging, firing: Firing, patient: PatientFile) -> AlertOutcome:
    """Open, update or suppress the rule's episode for the firing; `patient` is the event's
    patient, read once by the caller (`handlers.patient_file`)."""
    now = m.clock.now()
    patient_ref = patient.ref
    latest = latest_episode(m.store, patient_ref, firing.rule_id)
    issue, episode = latest if latest else (None, None)
    decision = decide(firing.rule, firing, episode, now, patient_ref)
    if decision.action == "open":
        # A directional snooze silences a new episode (never a `stat` one); it is re-checked when
        # the snooze ends (handlers/snooze.py).
        silenced = active_snooze(m.store, patient_ref, firing.rule, firing.severity, now)
        if silenced is not None:
            return AlertOutcome(Decision("suppress", silenced))
        return AlertOutcome(decision, _open(m, firing, patient, now, decision))
    if decision.action == "update" and issue is not None:
        return AlertOutcome(decision, _update(m, firing, patient, issue, now, decision))
    return AlertOutcome(decision)


def _open(m: Messaging, firing: Firing, patient: PatientFile, now: datetime, decision: Decision) -> int:
    patient_ref = patient.ref
    res = open_episode(firing, patient_ref, now)
    key = res.detected_issue["identifier"][0]["value"]
    chain_id = firing.rule.actions.escalate
    # The Task and Flag in one read and one transaction (one COMMIT; two requests on the HTTP adapter).
    first = [] if res.task is None else [ready_to_escalate(m, res.task, severity=firing.severity, chain_id=chain_id)]
    stored = put_all_if_absent(m.store, first + ([] if res.flag is None else [res.flag]))
    task = stored[0] if res.task is not None else None
    sent = 0
    targets = firing.rule.actions.notify if decision.notify else []
    if "patient" in targets:
        sent += notify_patient(m, patient, episode_key=key, severity=firing.severity, phase=OPENING,
                               urgent=firing.rule.patient_message_now(firing.severity))
    if task is not None:
        # Staff are reached through the Task's escalation chain: level 1 now, then the sweep.
        sent += start_escalation(m, task, severity=firing.severity, chain_id=chain_id)
    elif "care-team" in targets:
        sent += _care_team_notice(m, firing.rule, firing.severity, key, patient_ref, phase=OPENING)
    put_if_absent(m.store, res.detected_issue)
    publish_opened(m, episode_key=key, patient_ref=patient_ref, rule_id=firing.rule_id, severity=firing.severity)
    log.info("alert episode opened for rule %s (severity %s)", firing.rule_id, firing.severity)
    return sent


def _update(m: Messaging, firing: Firing, patient: PatientFile, issue: dict[str, Any], now: datetime,
            decision: Decision) -> int:
    key = issue["identifier"][0]["value"]
    sent = 0
    if decision.notify and "patient" in firing.rule.actions.notify:
        severity = decision.severity or firing.severity
        # Keyed by the readings and the severity: a re-delivered event sends nothing new, while a
        # rise in severity (an absence update has no readings to key by) is a message of its own.
        phase = f"update:{','.join(firing.trigger_refs)}:{severity}"
        sent = notify_patient(m, patient, episode_key=key, severity=severity, phase=phase,
                              urgent=firing.rule.patient_message_now(severity))
    if decision.severity and decision.severity != issue.get("severity"):
        _raise_priority(m.store, key, firing.rule, decision.severity)
    m.store.update(update_episode(issue, firing, decision, now), if_match=issue["meta"]["versionId"])
    return sent


def _raise_priority(store: FhirStore, task_id: str, rule: Rule, severity: str) -> None:
    """Raise the episode Task's priority, and only that. An acknowledgement or an escalation step
    may write the Task between our read and write: If-Match, then re-read and re-apply, so their
    status, owner and ack code stand. Still conflicting after 3 tries: PreconditionFailed goes up
    and the event is delivered again (the DetectedIssue is not updated yet, so it decides again)."""
    for attempt in range(3):
        try:
            task = store.read("Task", task_id)
        except (ResourceNotFound, ResourceGone):
            return
        raised = raise_task_priority(task, rule, severity)
        if raised == task:
            return
        try:
            store.update(raised, if_match=task["meta"]["versionId"])
            return
        except PreconditionFailed:
            if attempt == 2:
                raise


def close(m: Messaging, issue: dict[str, Any], now: datetime, reason: str, *, code: str = "resolved",
          by: dict[str, Any] | None = None) -> None:
    """Close an episode (the rule stopped holding long enough, or staff resolved it: `by` is then
    their reference, the mitigation's author). The Task is left alone: an unacknowledged Task keeps
    escalating until someone acts on it."""
    m.store.update(close_episode(issue, now, reason, by=by), if_match=issue["meta"]["versionId"])
    try:
        flag = m.store.read("Flag", issue["identifier"][0]["value"])
        if flag.get("status") == "active":
            m.store.update(close_flag(flag, now))
    except (ResourceNotFound, ResourceGone):
        pass
    publish(m, closed(detected_issue=f"DetectedIssue/{issue['id']}", patient=issue["patient"]["reference"],
                      reason=code, at=now))


def put_if_absent(store: FhirStore, resource: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Write a resource with a deterministic id unless it exists. Never overwrites: a replay must
    not reset state that later steps (acknowledgement, escalation) changed."""
    try:
        return store.read(resource["resourceType"], resource["id"]), False
    except ResourceNotFound:
        result = store.update(resource)
        assert result.resource is not None
        return result.resource, True


def put_all_if_absent(store: FhirStore, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`put_if_absent` for several resources: read together (one batch request where the store
    batches reads: fhirstore.batch_reads), the missing ones written in ONE transaction Bundle.
    Returns each resource as stored, in order."""
    if not resources:
        return []
    found = read_together(store, [Read(r["resourceType"], r["id"]) for r in resources])
    missing = [r for r, f in zip(resources, found, strict=True) if f is None]
    if not missing:
        return [f for f in found if isinstance(f, dict)]
    response = store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in missing]})
    written = iter(response.get("entry") or [])
    out = []
    for resource, existing in zip(resources, found, strict=True):
        if isinstance(existing, dict):
            out.append(existing)
            continue
        entry = next(written, None) or {}
        answered = entry.get("resource")
        out.append(answered if isinstance(answered, dict) else store.read(resource["resourceType"], resource["id"]))
    return out


def _care_team_notice(m: Messaging, rule: Rule, severity: str, key: str, patient_ref: str, *, phase: str) -> int:
    """A rule without a care-team Task still tells the care team (no escalation to run)."""
    outcome = deliver(m.store, m.channels, MessageRequest(
        key=f"{key}|{phase}|care-team", channel="outbox", to=m.staff_fallback_address,
        body=f"{m.org_name}: {'STAT ' if rule.priority_for(severity) == 'stat' else ''}{severity} alert: "
             f"{rule.title}. Review DetectedIssue/{key}.",
        patient_ref=patient_ref, about_ref=f"DetectedIssue/{key}", category="alert",
        tags={"rule": rule.id, "recipient": "care-team"}), m.clock)
    return int(outcome.status == "sent")
