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

from common.clock import Clock
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.channels.base import Channel
from notifications.dispatch import DeliveryOutcome, MessageRequest, deliver
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


@dataclass(frozen=True)
class MessagePolicy:
    """Where alert messages go and what they may say (from settings, not code)."""

    channel: str = "outbox"
    program_contact: str = "your care team"
    staff_address: str = "care-team"


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


def act_on_firing(
    store: FhirStore, channels: dict[str, Channel], clock: Clock, policy: MessagePolicy,
    firing: Firing, patient_ref: str,
) -> AlertOutcome:
    now = clock.now()
    latest = latest_episode(store, patient_ref, firing.rule_id)
    issue, episode = latest if latest else (None, None)
    decision = decide(firing.rule, firing, episode, now, patient_ref)
    if decision.action == "open":
        return AlertOutcome(decision, _open(store, channels, clock, policy, firing, patient_ref, now, decision))
    if decision.action == "update" and issue is not None:
        return AlertOutcome(decision, _update(store, channels, clock, policy, firing, issue, now, decision))
    return AlertOutcome(decision)


def _open(store: FhirStore, channels: dict[str, Channel], clock: Clock, policy: MessagePolicy, firing: Firing,
          patient_ref: str, now: datetime, decision: Decision) -> int:
    res = open_episode(firing, patient_ref, now)
    for resource in (res.task, res.flag):
        if resource is not None:
            put_if_absent(store, resource)
    key = res.detected_issue["identifier"][0]["value"]
    sent = 0
    if decision.notify:
        sent = _send(store, channels, clock, policy, firing.rule, firing.severity, key, patient_ref, phase="open")
    put_if_absent(store, res.detected_issue)
    log.info("alert episode opened for rule %s (severity %s)", firing.rule_id, firing.severity)
    return sent


def _update(store: FhirStore, channels: dict[str, Channel], clock: Clock, policy: MessagePolicy, firing: Firing,
            issue: dict[str, Any], now: datetime, decision: Decision) -> int:
    key = issue["identifier"][0]["value"]
    patient_ref = issue["patient"]["reference"]
    sent = 0
    if decision.notify:
        phase = "update:" + ",".join(firing.trigger_refs)
        sent = _send(store, channels, clock, policy, firing.rule, decision.severity or firing.severity, key,
                     patient_ref, phase=phase)
    if decision.severity and decision.severity != issue.get("severity"):
        try:
            task = store.read("Task", key)
            store.update(raise_task_priority(task, firing.rule, decision.severity))
        except (ResourceNotFound, ResourceGone):
            pass
    store.update(update_episode(issue, firing, decision, now), if_match=issue["meta"]["versionId"])
    return sent


def close(store: FhirStore, issue: dict[str, Any], now: datetime, reason: str) -> None:
    """Close an episode (the rule stopped holding long enough, or staff resolved it)."""
    store.update(close_episode(issue, now, reason), if_match=issue["meta"]["versionId"])
    try:
        flag = store.read("Flag", issue["identifier"][0]["value"])
    except (ResourceNotFound, ResourceGone):
        return
    if flag.get("status") == "active":
        store.update(close_flag(flag, now))


def put_if_absent(store: FhirStore, resource: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Write a resource with a deterministic id unless it exists. Never overwrites: a replay must
    not reset state that later steps (acknowledgement, escalation) changed."""
    try:
        return store.read(resource["resourceType"], resource["id"]), False
    except ResourceNotFound:
        result = store.update(resource)
        assert result.resource is not None
        return result.resource, True


def _send(store: FhirStore, channels: dict[str, Channel], clock: Clock, policy: MessagePolicy, rule: Rule,
          severity: str, key: str, patient_ref: str, *, phase: str) -> int:
    outcomes: list[DeliveryOutcome] = []
    for target in rule.actions.notify:
        if target == "patient":
            to, recipient = _patient_address(store, patient_ref), patient_ref
            # PHI-minimal: no reading, condition, program or name (clinical.md §6.1).
            body = f"Vigil: {policy.program_contact} would like you to call them today. Reply STOP to opt out."
        else:
            to, recipient = policy.staff_address, None
            body = f"Vigil alert ({severity}): {rule.title}. {patient_ref}. Review DetectedIssue/{key}."
        outcomes.append(deliver(store, channels, MessageRequest(
            key=f"{key}|{phase}|{target}|{policy.channel}", channel=policy.channel, to=to, body=body,
            patient_ref=patient_ref, about_ref=f"DetectedIssue/{key}", recipient_ref=recipient, category="alert",
            tags={"rule": rule.id, "recipient": target},
        ), clock))
    return sum(1 for o in outcomes if o.status == "sent")


def _patient_address(store: FhirStore, patient_ref: str) -> str:
    try:
        patient = store.read("Patient", patient_ref.partition("/")[2])
    except (ResourceNotFound, ResourceGone):
        return patient_ref
    telecoms = sorted(
        (t for t in patient.get("telecom", []) if t.get("system") in ("sms", "phone", "email") and t.get("value")),
        key=lambda t: t.get("rank", 1_000_000),
    )
    return telecoms[0]["value"] if telecoms else patient_ref
