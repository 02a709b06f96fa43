"""The dead-letter store: every input Vigil could not process is kept here with its reason.

Nothing is dropped silently (DESIGN §9). A dead letter keeps the raw payload (bytes), the topic
it came from (so `replay` can publish it there again), a machine-readable reason code, and a
human-readable detail that names the field, template or expression involved. Details never quote
reading values or names: they name *where* the problem is, the payload holds *what*.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.sqlite_db import ThreadConnections
from common.sqlite_schema import Schema
from ingest.poison import storable_text


@dataclass(frozen=True)
class DeadLetter:
    id: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    properties: dict[str, Any]
    created_at: float
    source: str  # which stage parked it: "ingest", "bus", "fhir-events", ...
    replayed_at: float | None = None
    purged_at: float | None = None  # when retention erased the payload (the record stays)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "source": self.source,
            "reason": self.reason,
            "detail": self.detail,
            "bytes": len(self.payload),
            "created_at": self.created_at,
            "replayed_at": self.replayed_at,
            "purged_at": self.purged_at,
        }


class DeadLetterSink(Protocol):
    def add(
        self,
        *,
        topic: str,
        reason: str,
        detail: str,
        payload: bytes | str,
        source: str,
        properties: dict[str, Any] | None = None,
    ) -> int:
        ...


def storable_payload(payload: bytes | str) -> tuple[bytes, bool]:
    """The payload as bytes, and whether it had to be escaped: a text payload holding lone UTF-16
    surrogates (not valid Unicode, so not encodable as UTF-8) is kept with them escaped as `\\udXXX`."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), False
    try:
        return payload.encode("utf-8"), False
    except UnicodeEncodeError:
        return payload.encode("utf-8", "backslashreplace"), True


def _first_schema(conn: sqlite3.Connection) -> None:
    """Version 1: the file of the first release. Unversioned files have the table, some (written
    before retention existed) without `purged_at`."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL, source TEXT NOT NULL,
            reason TEXT NOT NULL, detail TEXT NOT NULL,
            payload BLOB NOT NULL, properties TEXT NOT NULL,
            created_at REAL NOT NULL, replayed_at REAL, payload_sha TEXT)"""
    )
    columns = {r[1] for r in conn.execute("PRAGMA table_info(dead_letters)")}
    if "purged_at" not in columns:
        conn.execute("ALTER TABLE dead_letters ADD COLUMN purged_at REAL")
    # The same input failing the same way again (a re-delivery, a second demo run) is one
    # dead letter, not two; once replayed, a new failure is recorded afresh.
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_once ON dead_letters (topic, reason, payload_sha)"
        " WHERE replayed_at IS NULL"
    )


DEAD_LETTER_SCHEMA = Schema("dead-letter", [_first_schema])


class SqliteDeadLetterStore:
    """Dead letters in a SQLite file (the embedded default)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._connections = ThreadConnections(self.path, DEAD_LETTER_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._connections.transaction()

    def add(
        self,
        *,
        topic: str,
        reason: str,
        detail: str,
        payload: bytes | str,
        source: str,
        properties: dict[str, Any] | None = None,
    ) -> int:
        payload, escaped = storable_payload(payload)
        if escaped:
            detail += " (payload stored with lone surrogates escaped as \\udXXX: it was not valid Unicode)"
            properties = {**(properties or {}), "payload_escaped": "backslashreplace"}
        topic, reason, detail = storable_text(topic), storable_text(reason), storable_text(detail)
        sha = hashlib.sha256(payload).hexdigest()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO dead_letters (topic, source, reason, detail, payload, properties,"
                " created_at, payload_sha) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (topic, source, reason, detail, payload, json.dumps(properties or {}, default=str), time.time(), sha),
            )
            if cur.rowcount:
                return int(cur.lastrowid or 0)
            row = conn.execute(
                "SELECT id FROM dead_letters WHERE topic = ? AND reason = ? AND payload_sha = ?"
                " AND replayed_at IS NULL",
                (topic, reason, sha),
            ).fetchone()
            return int(row[0])

    def list(self, *, include_replayed: bool = False, limit: int = 1000) -> list[DeadLetter]:
        sql = "SELECT * FROM dead_letters"
        if not include_replayed:
            sql += " WHERE replayed_at IS NULL"
        sql += " ORDER BY id LIMIT ?"
        return [self._row(r) for r in self._conn().execute(sql, (limit,))]

    def get(self, id: int) -> DeadLetter | None:
        row = self._conn().execute("SELECT * FROM dead_letters WHERE id = ?", (id,)).fetchone()
        return self._row(row) if row else None

    def mark_replayed(self, id: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", (time.time(), id))

    def count(self, *, include_replayed: bool = False, after_id: int | None = None, source: str | None = None,
              topic: str | None = None) -> int:
        """How many dead letters, optionally only those added after `after_id` from a source/topic."""
        where, args = [], []
        if not include_replayed:
            where.append("replayed_at IS NULL")
        for column, value in (("id >", after_id), ("source =", source), ("topic =", topic)):
            if value is not None:
                where.append(f"{column} ?")
                args.append(value)
        sql = "SELECT count(*) FROM dead_letters" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self._conn().execute(sql, args).fetchone()[0])

    def last_id(self) -> int:
        """The id of the newest dead letter (0 when there is none)."""
        return int(self._conn().execute("SELECT coalesce(max(id), 0) FROM dead_letters").fetchone()[0])

    def counts_by_reason(self) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT reason, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY reason ORDER BY 2 DESC"
        )
        return {r[0]: int(r[1]) for r in rows}

    def purge(self, *, older_than_s: float, now: float | None = None, dry_run: bool = False) -> dict[str, int]:
        """Retention. A replayed dead letter older than the retention is deleted: its input went back
        through the pipeline and the failure is settled. One never replayed is the record of a
        failure nobody acted on: it stays (topic, reason, detail, times, size) but its payload and
        properties, the health data, are erased. Deleted bytes are overwritten (secure_delete) and
        the write-ahead log is truncated, so the data does not linger in free pages."""
        cutoff = (time.time() if now is None else now) - older_than_s
        conn = self._conn()
        old = "created_at < ?"
        deleted = int(conn.execute(f"SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL AND {old}",
                                   (cutoff,)).fetchone()[0])
        erased = int(conn.execute(f"SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL"
                                  f" AND purged_at IS NULL AND {old}", (cutoff,)).fetchone()[0])
        if not dry_run and (deleted or erased):
            conn.execute("PRAGMA secure_delete = ON")
            try:
                with self._tx() as tx:
                    tx.execute(f"DELETE FROM dead_letters WHERE replayed_at IS NOT NULL AND {old}", (cutoff,))
                    # payload_sha goes too: the same input failing again must be recorded afresh
                    # (with its payload), not matched to this erased record.
                    tx.execute(f"UPDATE dead_letters SET payload = X'', properties = '{{}}', payload_sha = NULL,"
                               f" purged_at = ? WHERE replayed_at IS NULL AND purged_at IS NULL AND {old}",
                               (time.time(), cutoff))
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.execute("PRAGMA secure_delete = OFF")
        return {"deleted": deleted, "payloads_erased": erased}

    def close(self) -> None:
        self._connections.close()

    @staticmethod
    def _row(r: tuple[Any, ...]) -> DeadLetter:
        return DeadLetter(
            id=r[0], topic=r[1], source=r[2], reason=r[3], detail=r[4], payload=bytes(r[5]),
            properties=json.loads(r[6]), created_at=r[7], replayed_at=r[8],
            purged_at=r[10] if len(r) > 10 else None,
        )
