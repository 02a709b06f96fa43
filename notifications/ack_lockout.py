"""A per-sender limit on `ACK <code>` texts: a few wrong codes in a window lock the number out.

An acknowledgement code is six characters from a 31-letter alphabet (~2^30 values), and any
number may text one: unlimited guesses would find codes in use, and every guess cost a reply
text. So, per sending number (docs/notifications.md "Acknowledgement by SMS"):

- a refused `ACK` (no valid code, an unknown code, a code of an alert not on the sender's care
  teams) counts as a failure; `max_failures` failures within `window` lock the number out for
  `lockout`; an accepted code clears the count;
- while locked out, an `ACK` text from that number is not looked up at all — a correct code is
  refused too, until the lockout ends — and gets no reply: the text that caused the lockout
  gets the one `ack_locked` reply (so 300 guesses cost at most `max_failures` replies);
- other numbers are not affected.

The state is one `Basic` resource per number in the FHIR store (identifier: a digest of the
number), written with If-Match: durable, and shared by every instance that uses the store, so a
lockout holds across restarts and across Functions instances. Each failure is recorded with its
inbound message id, so a re-delivered text (at-least-once) is never counted twice and the
message that caused the lockout can have its reply resumed. Staff see the lockout on that
record (`Basic?code=ack-sms-lockout`) and as the `Vigil.Sms.AckLockedOut` workflow event.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from common.clock import Clock, iso, parse_instant
from common.codes import vigil_system
from fhirstore.errors import PreconditionFailed
from fhirstore.port import FhirStore

log = logging.getLogger(__name__)

SENDER_SYSTEM = vigil_system("ack-sms-sender")  # identifier: sha256 of the E.164 number
RECORD_KIND = "ack-sms-lockout"
SENDER_EXT = vigil_system("ack-sms-sender-number")
FAILURE_EXT = vigil_system("ack-sms-failure")
LOCKED_UNTIL_EXT = vigil_system("ack-sms-locked-until")
LOCKED_SINCE_EXT = vigil_system("ack-sms-locked-since")
LOCKED_BY_EXT = vigil_system("ack-sms-locked-by")  # the inbound message id that caused the lockout
LOCKOUTS_EXT = vigil_system("ack-sms-lockouts")  # how many times this number was locked out
# Refusals that count: a guess. "ambiguous" (a valid code shared by two open alerts) does not.
COUNTED_REASONS = frozenset({"no-valid-code", "unknown-code", "not-on-care-team"})


@dataclass(frozen=True)
class AckLimits:
    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    lockout: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("the ACK failure limit must be at least 1")
        if self.window <= timedelta(0) or self.lockout <= timedelta(0):
            raise ValueError("the ACK failure window and lockout must be positive")


@dataclass(frozen=True)
class SenderState:
    failures: tuple[tuple[str, datetime], ...] = ()  # (inbound message id, when)
    locked_since: datetime | None = None
    locked_until: datetime | None = None
    locked_by: str | None = None
    lockouts: int = 0
    record: str | None = None  # Basic/<id>

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until


@dataclass(frozen=True)
class FailureOutcome:
    """counted: below the limit; locked: this failure locked the number out (reply `ack_locked`,
    announce); already-locked: it was locked out already."""

    status: Literal["counted", "locked", "already-locked"]
    state: SenderState


class AckSenderLimit:
    """The per-number failure count and lockout, in the FHIR store."""

    def __init__(self, store: FhirStore, clock: Clock, limits: AckLimits | None = None) -> None:
        self.store = store
        self.clock = clock
        self.limits = limits or AckLimits()

    def state(self, sender: str) -> SenderState:
        resource = self._find(sender)
        return _state(resource) if resource is not None else SenderState()

    def record_failure(self, sender: str, message_id: str, *, member: str | None = None) -> FailureOutcome:
        """Count a refused `ACK` from `sender` (idempotent per message id); lock out at the limit."""
        for _ in range(5):  # another instance may write the same record between our read and write
            resource = self._find(sender) or self._create(sender)
            now = self.clock.now()
            state = _state(resource)
            if state.locked(now):
                return FailureOutcome("locked" if state.locked_by == message_id else "already-locked", state)
            if any(mid == message_id for mid, _ in state.failures):
                return FailureOutcome("counted", state)  # a re-delivered text: counted once
            recent = [(mid, at) for mid, at in state.failures if now - at < self.limits.window]
            recent.append((message_id, now))
            locking = len(recent) >= self.limits.max_failures
            new = SenderState(
                failures=() if locking else tuple(recent[-self.limits.max_failures:]),
                locked_since=now if locking else state.locked_since,
                locked_until=now + self.limits.lockout if locking else state.locked_until,
                locked_by=message_id if locking else state.locked_by,
                lockouts=state.lockouts + int(locking), record=state.record)
            try:
                self._write(resource, new, member)
            except PreconditionFailed:
                continue
            if locking:
                log.warning("ACK by SMS: a number was locked out after %d failed codes (%s)",
                            self.limits.max_failures, state.record)
            return FailureOutcome("locked" if locking else "counted", new)
        raise PreconditionFailed("the ACK sender record kept changing")

    def clear(self, sender: str) -> None:
        """An accepted code: the failures so far no longer count (a lockout stays as it is)."""
        for _ in range(5):
            resource = self._find(sender)
            if resource is None:
                return
            state = _state(resource)
            if not state.failures:
                return
            try:
                self._write(resource, SenderState((), state.locked_since, state.locked_until, state.locked_by,
                                                  state.lockouts, state.record), None)
                return
            except PreconditionFailed:
                continue

    # -- the record ------------------------------------------------------------------------
    def _find(self, sender: str) -> dict[str, Any] | None:
        found = self.store.search("Basic", {"identifier": f"{SENDER_SYSTEM}|{_digest(sender)}"}).resources
        return found[0] if found else None

    def _create(self, sender: str) -> dict[str, Any]:
        resource = {
            "resourceType": "Basic",
            "identifier": [{"system": SENDER_SYSTEM, "value": _digest(sender)}],
            "code": {"coding": [{"system": vigil_system("record-kind"), "code": RECORD_KIND}]},
            "created": self.clock.now().date().isoformat(),
            # The number itself, for staff who look the lockout up (the store holds contact details
            # anyway); never in logs or events.
            "extension": [{"url": SENDER_EXT, "valueString": sender}],
        }
        result = self.store.create(resource, if_none_exist=f"identifier={SENDER_SYSTEM}|{_digest(sender)}")
        return result.resource if result.resource is not None else self._find(sender) or resource

    def _write(self, resource: dict[str, Any], state: SenderState, member: str | None) -> None:
        updated = dict(resource)
        keep = [e for e in resource.get("extension", []) if e.get("url") == SENDER_EXT]
        ext: list[dict[str, Any]] = [*keep]
        for mid, at in state.failures:
            ext.append({"url": FAILURE_EXT, "extension": [{"url": "message", "valueString": mid},
                                                          {"url": "at", "valueDateTime": iso(at)}]})
        if state.locked_until is not None:
            ext.append({"url": LOCKED_SINCE_EXT, "valueDateTime": iso(state.locked_since or state.locked_until)})
            ext.append({"url": LOCKED_UNTIL_EXT, "valueDateTime": iso(state.locked_until)})
        if state.locked_by:
            ext.append({"url": LOCKED_BY_EXT, "valueString": state.locked_by})
        if state.lockouts:
            ext.append({"url": LOCKOUTS_EXT, "valueInteger": state.lockouts})
        updated["extension"] = ext
        if member:
            updated["subject"] = {"reference": member}  # the staff member the number belongs to
        self.store.update(updated, if_match=(resource.get("meta") or {}).get("versionId"))


def _digest(sender: str) -> str:
    return hashlib.sha256(sender.encode()).hexdigest()


def _state(resource: dict[str, Any]) -> SenderState:
    failures: list[tuple[str, datetime]] = []
    since = until = None
    by: str | None = None
    lockouts = 0
    for e in resource.get("extension", []):
        url = e.get("url")
        if url == FAILURE_EXT:
            parts = {p.get("url"): p.get("valueString") or p.get("valueDateTime") for p in e.get("extension", [])}
            if parts.get("message") and parts.get("at"):
                failures.append((str(parts["message"]), parse_instant(str(parts["at"]))))
        elif url == LOCKED_UNTIL_EXT and e.get("valueDateTime"):
            until = parse_instant(e["valueDateTime"])
        elif url == LOCKED_SINCE_EXT and e.get("valueDateTime"):
            since = parse_instant(e["valueDateTime"])
        elif url == LOCKED_BY_EXT:
            by = e.get("valueString")
        elif url == LOCKOUTS_EXT:
            lockouts = int(e.get("valueInteger") or 0)
    record = f"Basic/{resource['id']}" if resource.get("id") else None
    return SenderState(tuple(failures), since, until, by, lockouts, record)
