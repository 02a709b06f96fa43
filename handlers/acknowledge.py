"""A clinician acknowledges an alert by its signed link: the escalation chain stops.

Order: verify the token, record the acknowledgement (Task accepted + owner, DetectedIssue
mitigation), then spend the token — so a failed write never burns the link. A second or late
acknowledgement changes nothing and says so; a forged, expired or reused link gets a clear refusal.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from handlers.messaging import ACK_PURPOSE, Messaging
from notifications.escalation import acknowledge, add_mitigation, level_of
from notifications.tokens import TokenClaims, TokenExpired, TokenForged, TokenReused, TokenWrongPurpose
from notifications.workflow_events import acknowledged


@dataclass(frozen=True)
class AckResult:
    status: int  # the HTTP status to answer with
    message: str  # shown to the clinician: no patient details


def acknowledge_by_token(m: Messaging, token: str) -> AckResult:
    try:
        claims = m.tokens.verify(token, purpose=ACK_PURPOSE)
    except (TokenForged, TokenWrongPurpose):
        return AckResult(403, "This link is not a valid acknowledgement link.")
    except TokenExpired:
        return AckResult(410, "This link has expired. Open the alert in the care-team worklist to acknowledge it.")
    kind, _, task_id = claims.subject.partition("/")
    if kind != "Task" or not claims.actor:
        return AckResult(403, "This link is not a valid acknowledgement link.")
    for _ in range(3):  # a sweep may advance the Task between our read and write
        try:
            task = m.store.read("Task", task_id)
        except (ResourceNotFound, ResourceGone):
            return AckResult(404, "This alert no longer exists.")
        now = m.clock.now()
        ack = acknowledge(task, claims.actor, now)
        if not ack.changed:
            _spend(m, claims)
            return AckResult(200, "This alert was already acknowledged. Thank you.")
        try:
            m.store.update(ack.task, if_match=task["meta"]["versionId"])
        except PreconditionFailed:
            continue
        break
    else:
        return AckResult(503, "The alert is being updated; please try the link again.")
    focus = (task.get("focus") or {}).get("reference", "")
    if focus.startswith("DetectedIssue/") and ack.mitigation is not None:
        try:
            issue = m.store.read("DetectedIssue", focus.partition("/")[2])
            updated, changed = add_mitigation(issue, ack.mitigation)
            if changed:
                m.store.update(updated)
        except (ResourceNotFound, ResourceGone):
            pass
    m.workflow.publish([acknowledged(detected_issue=focus, patient=task["for"]["reference"], task=f"Task/{task_id}",
                                     by=claims.actor, level=level_of(task), at=now, late=ack.late)])
    _spend(m, claims)
    return AckResult(200, "Acknowledged. The escalation has stopped." + (" (It had already run out.)" if ack.late else ""))


def _spend(m: Messaging, claims: TokenClaims) -> None:
    with contextlib.suppress(TokenReused):  # a second click: the acknowledgement stands either way
        m.tokens.consume(claims)
