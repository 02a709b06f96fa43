"""The send ledger: a durable "did this channel already hand this message to its provider?" record.

ACS SMS and SMTP are not idempotent: the SMS SDK makes a new repeatability id on every call
(Repeatability-Request-ID, https://learn.microsoft.com/rest/api/communication/sms/send) and SMTP has no idempotency at
all. So a channel
claims the message id here *before* calling the provider and records the outcome after:

    claim(key) -> new        call the provider; then mark_sent(key, provider_id), or release(key)
                               when the provider certainly did not take the message (refused,
                               connection never made), or mark_in_doubt(key) when it may have
               -> sent       already sent: report "duplicate", send nothing
               -> in-flight  another worker holds a fresh claim: report "transient", retry later
               -> in-doubt   a claim older than the lease was never finished (a crash between
                             send and record) or the response was lost: the provider may have
                             sent it, so it is NOT sent again; a delivery report can still
                             resolve it with mark_sent

A permanent refusal releases the claim instead of recording it: nothing went out, so a later
attempt (say after the number was corrected) cannot duplicate anything.

Two adapters: `SqliteSendLedger` (the embedded default, one file under the data directory; safe
across threads and processes on one machine) and `FhirSendLedger` (one `Basic` resource per
claim in the FHIR store, shared by every Functions instance at scale). `MemorySendLedger` is
for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from common.clock import iso, parse_instant
from common.codes import vigil_system
from common.sqlite_db import open_database, transaction
from common.sqlite_schema import Schema, migrate
from common.storage import private_dir
from fhirstore.errors import PreconditionFailed, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from notifications.channels.base import SendResult

ClaimState = Literal["new", "in-flight", "sent", "in-doubt"]
DEFAULT_LEASE = timedelta(minutes=2)


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    provider_id: str | None = None
    reason: str | None = None
    claimed_at: datetime | None = None


def claim_or_refusal(ledger: SendLedger, key: str, now: datetime, lease: timedelta, *,
                     resend_in_doubt: bool = False) -> SendResult | None:
    """Claim `key` before calling a provider. None: the caller may send now. Otherwise the
    SendResult to answer with: already sent ("duplicate"), another attempt holds the claim
    ("transient", retry when its lease ends), or an earlier attempt's outcome is unknown
    ("permanent": not sent again, unless the provider de-duplicates and `resend_in_doubt`)."""
    claim = ledger.claim(key, now, lease)
    if claim.state == "sent":
        return SendResult("duplicate", provider_id=claim.provider_id)
    if claim.state == "in-flight":
        remaining = lease - (now - claim.claimed_at) if claim.claimed_at else lease
        return SendResult("transient", reason="another attempt to send this message is in progress",
                          retry_after_s=max(1.0, remaining.total_seconds()), code="in-flight")
    if claim.state == "in-doubt" and not resend_in_doubt:
        return SendResult("permanent", reason="an earlier attempt may have reached the provider "
                          f"({claim.reason or 'outcome unknown'}); not sent again to avoid a duplicate",
                          code="in-doubt")
    return None


class SendLedger(Protocol):
    def claim(self, key: str, now: datetime, lease: timedelta = DEFAULT_LEASE) -> Claim:
        ...

    def mark_sent(self, key: str, provider_id: str | None, now: datetime) -> None:
        ...

    def mark_in_doubt(self, key: str, reason: str, now: datetime) -> None:
        ...

    def release(self, key: str) -> None:
        ...

    def lookup(self, key: str) -> Claim | None:
        ...


def _decide(state: str, claimed_at: datetime, now: datetime, lease: timedelta) -> ClaimState:
    if state == "claimed":
        return "in-flight" if now - claimed_at < lease else "in-doubt"
    return state  # type: ignore[return-value]


class MemorySendLedger:
    """In-process ledger (tests, benchmarks). Not durable: never use it where a crash matters."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, now: datetime, lease: timedelta = DEFAULT_LEASE) -> Claim:
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                self._rows[key] = {"state": "claimed", "claimed_at": now, "provider_id": None, "reason": None}
                return Claim("new", claimed_at=now)
            state = _decide(row["state"], row["claimed_at"], now, lease)
            if state == "in-doubt" and row["state"] == "claimed":
                row.update(state="in-doubt", reason="claim expired before the send was recorded")
            return Claim(state, row["provider_id"], row["reason"], row["claimed_at"])

    def mark_sent(self, key: str, provider_id: str | None, now: datetime) -> None:
        with self._lock:
            row = self._rows.setdefault(key, {"claimed_at": now, "reason": None})
            row.update(state="sent", provider_id=provider_id)

    def mark_in_doubt(self, key: str, reason: str, now: datetime) -> None:
        with self._lock:
            row = self._rows.setdefault(key, {"claimed_at": now, "provider_id": None})
            row.update(state="in-doubt", reason=reason)

    def release(self, key: str) -> None:
        with self._lock:
            if (self._rows.get(key) or {}).get("state") != "sent":
                self._rows.pop(key, None)

    def lookup(self, key: str) -> Claim | None:
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return None
            return Claim(row["state"] if row["state"] != "claimed" else "in-flight", row["provider_id"],
                         row["reason"], row["claimed_at"])


# Version 1 is the file of the first release (created with IF NOT EXISTS: unversioned files have it).
SEND_LEDGER_SCHEMA = Schema("send ledger", [
    """CREATE TABLE IF NOT EXISTS sends (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        provider_id TEXT,
        reason TEXT,
        claimed_at TEXT NOT NULL,
        finished_at TEXT
    )""",
])


class SqliteSendLedger:
    """The embedded default: one SQLite file; a claim is one `BEGIN IMMEDIATE` transaction, so two
    processes on the same machine cannot both win it."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_dir(Path(self.path).parent)
        self._lock = threading.Lock()
        self._conn = open_database(self.path, synchronous="FULL")  # a recorded send must survive a power cut
        migrate(self._conn, SEND_LEDGER_SCHEMA, self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def claim(self, key: str, now: datetime, lease: timedelta = DEFAULT_LEASE) -> Claim:
        with self._lock, transaction(self._conn):
            row = self._conn.execute(
                "SELECT state, provider_id, reason, claimed_at FROM sends WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO sends (key, state, claimed_at) VALUES (?, 'claimed', ?)", (key, iso(now))
                )
                return Claim("new", claimed_at=now)
            state, provider_id, reason, claimed_text = row
            claimed_at = parse_instant(claimed_text)
            decided = _decide(state, claimed_at, now, lease)
            if decided == "in-doubt" and state == "claimed":
                reason = "claim expired before the send was recorded"
                self._conn.execute(
                    "UPDATE sends SET state = 'in-doubt', reason = ?, finished_at = ? WHERE key = ?",
                    (reason, iso(now), key),
                )
            return Claim(decided, provider_id, reason, claimed_at)

    def mark_sent(self, key: str, provider_id: str | None, now: datetime) -> None:
        self._finish(key, "sent", provider_id, None, now)

    def mark_in_doubt(self, key: str, reason: str, now: datetime) -> None:
        self._finish(key, "in-doubt", None, reason, now)

    def _finish(self, key: str, state: str, provider_id: str | None, reason: str | None, now: datetime) -> None:
        with self._lock:
            self._conn.execute(
                """INSERT INTO sends (key, state, provider_id, reason, claimed_at, finished_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET state = excluded.state,
                       provider_id = COALESCE(excluded.provider_id, sends.provider_id),
                       reason = excluded.reason, finished_at = excluded.finished_at""",
                (key, state, provider_id, reason, iso(now), iso(now)),
            )

    def release(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM sends WHERE key = ? AND state != 'sent'", (key,))

    def lookup(self, key: str) -> Claim | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT state, provider_id, reason, claimed_at FROM sends WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        state, provider_id, reason, claimed_text = row
        return Claim("in-flight" if state == "claimed" else state, provider_id, reason, parse_instant(claimed_text))


LEDGER_SYSTEM = vigil_system("send-ledger")
_STATE_EXT = vigil_system("send-ledger-state")
_PROVIDER_EXT = vigil_system("send-ledger-provider-id")
_REASON_EXT = vigil_system("send-ledger-reason")


class FhirSendLedger:
    """At scale: one `Basic` resource per claim, created with `If-None-Exist` on a Vigil identifier,
    so every Functions instance sees the same claims. The resource holds no message content and no
    address: only the message id, the state and the provider's message id.

    A claim is as exclusive as the server's conditional create. Not every server makes that atomic:
    two concurrent conditional creates can both succeed (microsoft/fhir-server#1382,
    hapifhir/hapi-fhir#3141), and then both callers send. The two resources must not wedge the key
    afterwards (every later conditional create would fail with "matched more than one"), so a key
    with several claims reads as its most advanced one."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store

    @staticmethod
    def _query(key: str) -> str:
        return f"identifier={LEDGER_SYSTEM}|{key}"

    def claim(self, key: str, now: datetime, lease: timedelta = DEFAULT_LEASE) -> Claim:
        resource = {
            "resourceType": "Basic",
            "identifier": [{"system": LEDGER_SYSTEM, "value": key}],
            "code": {"coding": [{"system": vigil_system("record-kind"), "code": "send-claim"}]},
            "created": now.astimezone(UTC).date().isoformat(),
            "extension": [
                {"url": _STATE_EXT, "valueCode": "claimed"},
                {"url": vigil_system("send-ledger-claimed-at"), "valueDateTime": iso(now)},
            ],
        }
        try:
            result = self.store.create(resource, if_none_exist=self._query(key))
        except PreconditionFailed:
            # Several claims for this key already (an earlier race, see the class docstring).
            found = self._find(key)
            if found is None:
                raise
            existing = found
        else:
            if result.outcome == "created":
                return Claim("new", claimed_at=now)
            existing = result.resource or {}
        state, provider_id, reason, claimed_at = _basic_state(existing, now)
        decided = _decide(state, claimed_at, now, lease)
        if decided == "in-doubt" and state == "claimed":
            reason = "claim expired before the send was recorded"
            try:
                self._write(existing, "in-doubt", None, reason)
            except PreconditionFailed:
                return self.claim(key, now, lease)  # someone else finished it meanwhile: look again
        return Claim(decided, provider_id, reason, claimed_at)

    def mark_sent(self, key: str, provider_id: str | None, now: datetime) -> None:
        self._finish(key, "sent", provider_id, None, now)

    def mark_in_doubt(self, key: str, reason: str, now: datetime) -> None:
        self._finish(key, "in-doubt", None, reason, now)

    def _finish(self, key: str, state: str, provider_id: str | None, reason: str | None, now: datetime) -> None:
        existing = self._find(key)
        if existing is None:
            # A delivery report for a message whose claim was released or never made here.
            self.claim(key, now)
            existing = self._find(key)
            assert existing is not None
        self._write(existing, state, provider_id, reason)

    def _write(self, existing: dict[str, Any], state: str, provider_id: str | None, reason: str | None) -> None:
        updated = dict(existing)
        keep = [e for e in existing.get("extension", []) if e.get("url") not in (_STATE_EXT, _REASON_EXT)]
        ext = [*keep, {"url": _STATE_EXT, "valueCode": state}]
        if provider_id:
            ext = [e for e in ext if e.get("url") != _PROVIDER_EXT]
            ext.append({"url": _PROVIDER_EXT, "valueString": provider_id})
        if reason:
            ext.append({"url": _REASON_EXT, "valueString": reason})
        updated["extension"] = ext
        version = (existing.get("meta") or {}).get("versionId")
        self.store.update(updated, if_match=version)

    def release(self, key: str) -> None:
        existing = self._find(key)
        if existing is None:
            return
        state, *_ = _basic_state(existing, datetime.now(UTC))
        if state != "sent":
            with contextlib.suppress(ResourceNotFound, ResourceGone):
                self.store.delete("Basic", existing["id"])

    def lookup(self, key: str) -> Claim | None:
        existing = self._find(key)
        if existing is None:
            return None
        state, provider_id, reason, claimed_at = _basic_state(existing, datetime.now(UTC))
        return Claim("in-flight" if state == "claimed" else state, provider_id, reason, claimed_at)  # type: ignore[arg-type]

    def _find(self, key: str) -> dict[str, Any] | None:
        found = self.store.search("Basic", {"identifier": f"{LEDGER_SYSTEM}|{key}"}).resources
        if len(found) <= 1:
            return found[0] if found else None
        # Sent beats in-doubt beats claimed: the record that knows most about the message decides.
        rank = {"sent": 0, "in-doubt": 1}
        return min(found, key=lambda r: (rank.get(_basic_state(r, datetime.now(UTC))[0], 2), str(r.get("id"))))


def _basic_state(resource: dict[str, Any], now: datetime) -> tuple[str, str | None, str | None, datetime]:
    values = {e.get("url"): e for e in resource.get("extension", [])}
    state = (values.get(_STATE_EXT) or {}).get("valueCode", "claimed")
    provider_id = (values.get(_PROVIDER_EXT) or {}).get("valueString")
    reason = (values.get(_REASON_EXT) or {}).get("valueString")
    claimed_text = (values.get(vigil_system("send-ledger-claimed-at")) or {}).get("valueDateTime")
    claimed_at = parse_instant(claimed_text) if claimed_text else now
    return state, provider_id, reason, claimed_at
