"""A clinician acknowledges an alert, by its signed link or by texting `ACK <code>`: the chain stops.

Both paths end in `record_acknowledgement`: the Task is `accepted` and owned by the clinician
(If-Match, retried when a sweep wrote first), the DetectedIssue gets its mitigation entry (If-Match
too: added on top of whatever the alert sweep wrote meanwhile, e.g. a close), and the
`acknowledged` workflow event goes out. A second or late acknowledgement changes nothing and says
so; when it comes from the clinician who holds the acknowledgement, the event goes out again (same
id, so subscribers de-duplicate), because the first publish may have failed after the Task was
written and nothing else would ever repeat it.

- Link (`acknowledge_by_token`): verify the token, record, then spend the token — so a failed write
  never burns the link. A forged, expired or reused link gets a clear refusal.
- SMS (`acknowledge_by_code`): the code (`urn:vigil:ack-code` on the Task, case-insensitive) finds
  the Task; the sender's number must be an SMS contact of a staff member on that patient's active
  care team, and that person is the acknowledging clinician. Several Tasks with the code are told
  apart by the sender's care teams; when that still leaves more than one open alert, or none, the
  answer is a refusal that points to the link. The caller (`handlers.acs_events`) sends the one
  reply, keyed by the inbound message id.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.paging import search_all
from handlers.messaging import ACK_PURPOSE, Messaging, publish
from notifications.ack_codes import ACK_CODE_SYSTEM, normalize_ack_code
from notifications.escalation import (
    LEVEL_SYSTEM,
    acknowledge,
    acknowledged_at,
    add_mitigation,
    is_open,
    level_of,
    mitigation_entry,
)
from notifications.preferences import Recipient, staff_recipients
from notifications.tokens import TokenClaims, TokenExpired, TokenForged, TokenReused, TokenWrongPurpose
from notifications.workflow_events import acknowledged

log = logging.getLogger(__name__)

# Reply templates (notifications/templates/<locale>/ack_*.sms.j2); none carries patient details.
REPLY_ACKNOWLEDGED = "ack_ok"
REPLY_ALREADY = "ack_already"
REPLY_REFUSED = "ack_refused"


class AcknowledgementBusy(RuntimeError):
    """The Task kept changing under us (sweeps racing); the caller should try again later."""


@dataclass(frozen=True)
class Recorded:
    """What `record_acknowledgement` did. status: acknowledged | already | missing | busy."""

    status: Literal["acknowledged", "already", "missing", "busy"]
    late: bool = False  # the chain had already run out
    owner: str | None = None  # who holds the acknowledgement now (the first one, for "already")


@dataclass(frozen=True)
class AckResult:
    status: int  # the HTTP status to answer with
    message: str  # shown to the clinician: no patient details


@dataclass(frozen=True)
class CodeAckResult:
    """The answer to an `ACK <code>` text. outcome: acknowledged | already | refused."""

    outcome: Literal["acknowledged", "already", "refused"]
    template: str  # the SMS reply to send (ack_ok | ack_already | ack_refused)
    locale: str  # of the reply: the clinician's language, else the program default
    code: str | None  # the normalized code, quoted back; None when the text held no valid code
    actor: str | None = None  # Practitioner/… (or PractitionerRole/…) who acknowledged
    task: str | None = None  # Task/<id>
    patient: str | None = None  # for the reply's Communication record, never for its text
    about: str | None = None  # the DetectedIssue
    reason: str | None = None  # why it was refused (logs and tests; the reply does not say)

    @property
    def changed(self) -> bool:
        return self.outcome == "acknowledged"


# -- the one acknowledgement core ----------------------------------------------------------------

def record_acknowledgement(m: Messaging, task_id: str, actor: str) -> Recorded:
    """Task accepted + owner, DetectedIssue mitigation, `acknowledged` event — once, whoever asks."""
    for _ in range(3):  # a sweep may advance the Task between our read and write
        try:
            task = m.store.read("Task", task_id)
        except (ResourceNotFound, ResourceGone):
            return Recorded("missing")
        now = m.clock.now()
        ack = acknowledge(task, actor, now)
        if not ack.changed:
            _repair_mitigation(m, task)
            if ack.previous_owner == actor:
                _republish_acknowledged(m, task)
            return Recorded("already", owner=ack.previous_owner)
        try:
            m.store.update(ack.task, if_match=task["meta"]["versionId"])
        except PreconditionFailed:
            continue
        break
    else:
        return Recorded("busy")
    focus = _focus(task)
    if ack.mitigation is not None:
        _add_mitigation(m, focus, ack.mitigation)
    # The acknowledgement stands whether or not the workflow topic is up (`publish` logs a failure).
    publish(m, acknowledged(detected_issue=focus, patient=task["for"]["reference"], task=f"Task/{task_id}",
                            by=actor, level=level_of(task), at=now, late=ack.late))
    return Recorded("acknowledged", late=ack.late, owner=actor)


def _republish_acknowledged(m: Messaging, task: dict[str, Any]) -> None:
    """The `acknowledged` event again, as first published: same id (type and DetectedIssue), the
    acknowledgement time stored on the Task, and level/late of the version that was acknowledged."""
    owner = (task.get("owner") or {}).get("reference")
    when = acknowledged_at(task)
    focus = _focus(task)
    if task.get("status") != "accepted" or not owner or when is None or not focus:
        return
    try:
        before = _version_acknowledged(m, task)
        event = acknowledged(detected_issue=focus, patient=task["for"]["reference"], task=f"Task/{task['id']}",
                             by=owner, level=level_of(before), at=when, late=_business(before) == "exhausted")
    except Exception as exc:  # a re-publish is best effort: the acknowledgement itself stands
        log.warning("acknowledged event for Task/%s not re-published: %s", task["id"], type(exc).__name__)
        return
    publish(m, event)


def _version_acknowledged(m: Messaging, task: dict[str, Any]) -> dict[str, Any]:
    """The Task version the acknowledgement was applied to (the accepted Task no longer says whether
    the chain had run out). Falls back to the accepted Task when history does not reach that far."""
    for entry in m.store.history("Task", task["id"]).get("entry", []):  # newest first
        version = entry.get("resource")
        if isinstance(version, dict) and version.get("status") != "accepted":
            return version
    return task


def _business(task: dict[str, Any]) -> str | None:
    codes = (task.get("businessStatus") or {}).get("coding", []) or []
    return next((c.get("code") for c in codes if c.get("system") == LEVEL_SYSTEM), None)


def _repair_mitigation(m: Messaging, task: dict[str, Any]) -> None:
    """A crash between the Task write and the DetectedIssue write would lose the mitigation for
    good (the Task no longer changes); it is rebuilt from the Task, so an equal entry is a no-op."""
    owner = (task.get("owner") or {}).get("reference")
    when = acknowledged_at(task)
    if task.get("status") == "accepted" and owner and when is not None:
        _add_mitigation(m, _focus(task), mitigation_entry(owner, when))


def _add_mitigation(m: Messaging, focus: str, entry: dict[str, Any]) -> None:
    if not focus.startswith("DetectedIssue/"):
        return
    # If-Match: the alert sweep may close the episode between our read and write; an unconditional
    # write would reopen it (status and period end lost) after `Closed` went out. Re-read, re-apply.
    for _ in range(3):
        try:
            issue = m.store.read("DetectedIssue", focus.partition("/")[2])
        except (ResourceNotFound, ResourceGone):
            return
        updated, changed = add_mitigation(issue, entry)
        if not changed:
            return
        try:
            m.store.update(updated, if_match=issue["meta"]["versionId"])
            return
        except PreconditionFailed:
            continue
    # The Task is accepted; a later acknowledgement of it (the "already" path) repairs the entry.
    log.warning("mitigation for %s not written: the DetectedIssue kept changing", focus)


def _focus(task: dict[str, Any]) -> str:
    return str((task.get("focus") or {}).get("reference", ""))


# -- by link -------------------------------------------------------------------------------------

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
    recorded = record_acknowledgement(m, task_id, claims.actor)
    if recorded.status == "missing":
        return AckResult(404, "This alert no longer exists.")
    if recorded.status == "busy":
        return AckResult(503, "The alert is being updated; please try the link again.")
    _spend(m, claims)
    if recorded.status == "already":
        return AckResult(200, "This alert was already acknowledged. Thank you.")
    return AckResult(200, "Acknowledged. The escalation has stopped."
                     + (" (It had already run out.)" if recorded.late else ""))


def _spend(m: Messaging, claims: TokenClaims) -> None:
    with contextlib.suppress(TokenReused):  # a second click: the acknowledgement stands either way
        m.tokens.consume(claims)


# -- by SMS code ---------------------------------------------------------------------------------

def acknowledge_by_code(m: Messaging, code_text: str | None, sender: str) -> CodeAckResult:
    """Resolve `ACK <code>` from `sender` (E.164) and acknowledge as that clinician.

    Raises AcknowledgementBusy when the Task kept changing (the inbound event is retried)."""
    code = normalize_ack_code(code_text)
    if code is None:
        return _refused(m, None, "no-valid-code")
    tasks = search_all(m.store, "Task", {"identifier": f"{ACK_CODE_SYSTEM}|{code}"})
    if not tasks:
        return _refused(m, code, "unknown-code")
    teams: dict[str, Recipient | None] = {}  # patient -> the sender as a member of its care team
    matches: list[tuple[dict[str, Any], Recipient]] = []
    for task in tasks:
        patient = (task.get("for") or {}).get("reference")
        if not patient:
            continue
        if patient not in teams:
            teams[patient] = _member_with_number(m, patient, sender)
        member = teams[patient]
        if member is not None:
            matches.append((task, member))
    if not matches:
        return _refused(m, code, "not-on-care-team")
    open_matches = [(t, who) for t, who in matches if is_open(t)]
    if len(open_matches) > 1:
        return _refused(m, code, "ambiguous")
    # No open one left: any match answers "already acknowledged" (the link path does the same).
    task, member = open_matches[0] if open_matches else matches[0]
    recorded = record_acknowledgement(m, task["id"], member.ref)
    if recorded.status == "busy":
        raise AcknowledgementBusy(f"Task/{task['id']} kept changing; acknowledgement not recorded yet")
    if recorded.status == "missing":
        return _refused(m, code, "unknown-code")
    # The same clinician again (or this very text re-delivered after a crash): their acknowledgement
    # stands, so they are told so rather than "someone already did".
    mine = recorded.status == "acknowledged" or recorded.owner == member.ref
    log.info("sms acknowledgement for Task/%s by %s: %s", task["id"], member.ref, recorded.status)
    return CodeAckResult("acknowledged" if recorded.status == "acknowledged" else "already",
                         REPLY_ACKNOWLEDGED if mine else REPLY_ALREADY, member.locale, code, actor=member.ref,
                         task=f"Task/{task['id']}", patient=task["for"]["reference"], about=_focus(task) or None)


def _member_with_number(m: Messaging, patient_ref: str, sender: str) -> Recipient | None:
    """The staff member on the patient's active care teams whose SMS number sent the text."""
    staff = staff_recipients(m.store, patient_ref, list(m.defaults.role_codes), now=m.clock.now(),
                             defaults=m.defaults, roster_fallback=False)
    for person in staff:
        if any(c.channel == "sms" and c.address == sender for c in person.contacts):
            return person
    return None


def _refused(m: Messaging, code: str | None, reason: str) -> CodeAckResult:
    # One reply for every refusal: a stranger learns nothing about which codes exist.
    log.info("sms acknowledgement refused: %s", reason)
    return CodeAckResult("refused", REPLY_REFUSED, m.defaults.locale, code, reason=reason)
