"""Open an alert for a fired rule and send its messages — each step idempotent.

Foundation scope: one alert per rule, patient and UTC day of the reading (the rules issue brings
proper episodes). The alert key derives only from those inputs, so a replayed event, a second
reading the same day, or a re-run after a crash finds the same DetectedIssue and the same
message keys, and nothing is sent twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from common.clock import Clock, iso
from common.codes import vigil_system
from fhirstore.errors import ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.channels.base import Channel
from notifications.dispatch import DeliveryOutcome, MessageRequest, deliver
from rules.simple import Firing, ThresholdRule

log = logging.getLogger(__name__)

ALERT_SYSTEM = vigil_system("alert")
RULE_SYSTEM = vigil_system("rule")


@dataclass(frozen=True)
class MessagePolicy:
    """Where messages go and what they may say (settings, not code)."""

    channel: str = "outbox"
    program_contact: str = "your care team"
    staff_address: str = "care-team"


def alert_key(rule_id: str, patient_ref: str, effective: str) -> str:
    day = effective[:10]  # the reading's UTC date, never the arrival date
    return hashlib.sha256(f"{rule_id}|{patient_ref}|{day}".encode()).hexdigest()[:32]


def open_alert(store: FhirStore, firing: Firing, observation: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the DetectedIssue for a firing unless it exists. Returns (resource, created)."""
    patient_ref = observation["subject"]["reference"]
    effective = observation.get("effectiveDateTime") or observation.get("effectivePeriod", {}).get("start", "")
    key = alert_key(firing.rule.id, patient_ref, effective)
    issue = {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": ALERT_SYSTEM, "value": key}],
        "status": "final",
        "code": {
            "coding": [{"system": RULE_SYSTEM, "code": firing.rule.id, "display": firing.rule.title}],
            "text": firing.rule.title,
        },
        "severity": firing.rule.severity,
        "patient": {"reference": patient_ref},
        "identifiedDateTime": effective,
        "author": {"display": "Vigil rules engine"},
        "implicated": [{"reference": f"Observation/{observation['id']}"}],
        # The explanation names the metric and threshold; no names or identifiers (issue 4).
        "detail": f"Rule '{firing.rule.id}' held: {firing.explanation}.",
    }
    result = store.create(issue, if_none_exist=f"identifier={ALERT_SYSTEM}|{key}")
    assert result.resource is not None
    return result.resource, result.outcome == "created"


def notify(
    store: FhirStore,
    channels: dict[str, Channel],
    clock: Clock,
    rule: ThresholdRule,
    issue: dict[str, Any],
    policy: MessagePolicy,
) -> list[DeliveryOutcome]:
    """Send the alert's messages. Safe to call again: completed messages are not resent."""
    key = issue["identifier"][0]["value"]
    patient_ref = issue["patient"]["reference"]
    outcomes = []
    for target in rule.notify:
        if target == "patient":
            to = _patient_address(store, patient_ref)
            # PHI-minimal: no reading, condition or name (clinical.md §6.1).
            body = f"Vigil: {policy.program_contact} would like you to call them today. Reply STOP to opt out."
            recipient_ref = patient_ref
        elif target == "care-team":
            to = policy.staff_address
            body = (f"Vigil alert ({rule.severity}): {rule.title}. {patient_ref}. "
                    f"Review DetectedIssue/{issue['id']}.")
            recipient_ref = None
        else:
            log.warning("rule %s names unknown recipient kind %r; skipped", rule.id, target)
            continue
        request = MessageRequest(
            key=f"{key}|{target}|{policy.channel}",
            channel=policy.channel,
            to=to,
            body=body,
            patient_ref=patient_ref,
            about_ref=f"DetectedIssue/{issue['id']}",
            recipient_ref=recipient_ref,
            category="alert",
            tags={"rule": rule.id, "recipient": target},
        )
        outcomes.append(deliver(store, channels, request, clock))
    return outcomes


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


def now_text(clock: Clock) -> str:
    return iso(clock.now())
