"""What sending alert messages needs, and the keys and events that composing and escalating share.

`Messaging` is built once by the composition root (`runtime.bootstrap.messaging`). Composing the
messages (the patient's alert, a clinician's escalation notice, a reminder) is
`handlers.compose`; running an episode's escalation chain is `handlers.escalations`. Every message
key derives from the episode and the step, so a replay sends nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from common.clock import Clock
from fhirstore.port import FhirStore
from notifications.channels.base import Channel
from notifications.escalation_chains import Chain
from notifications.preferences import PreferenceDefaults
from notifications.templates import TemplateLibrary
from notifications.tokens import SignedTokens
from notifications.workflow_events import WorkflowEvent, WorkflowPublisher, episode_opened

log = logging.getLogger(__name__)

ACK_PURPOSE = "ack"  # the purpose of the signed tokens in staff acknowledgement links
ACK_TTL = timedelta(hours=24)
OPENING = "open"  # the phase of an episode's first patient message (the alert sweep re-sends it)


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


def patient_message_key(episode_key: str, phase: str) -> str:
    """The message key of an episode's patient message in `phase` (`OPENING`, or an update's)."""
    return f"{episode_key}|{phase}|patient"


def focus_of(task: dict[str, Any]) -> str:
    """The DetectedIssue an episode's Task is about (`DetectedIssue/<episode key>`)."""
    return str((task.get("focus") or {}).get("reference", ""))


def publish(m: Messaging, event: WorkflowEvent) -> None:
    try:
        m.workflow.publish([event])
    except Exception as exc:  # a workflow subscriber being down must not stop clinical alerting
        log.warning("workflow event not published: %s", type(exc).__name__)


def publish_opened(m: Messaging, *, episode_key: str, patient_ref: str, rule_id: str, severity: str) -> None:
    publish(m, episode_opened(detected_issue=f"DetectedIssue/{episode_key}", patient=patient_ref, rule_id=rule_id,
                               severity=severity, at=m.clock.now()))
