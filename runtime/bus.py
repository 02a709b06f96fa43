"""The durable local bus: at-least-once queues in one SQLite file.

It stands in for Event Hubs and Event Grid on one machine. A receiver leases messages for a
visibility timeout; a message not acknowledged in time becomes visible again (the receiver
crashed). A failed message is retried with exponential backoff; after `max_attempts` it moves to
the dead-letter store with the last error. Leases carry a token so a late acknowledgement from a
receiver whose lease expired cannot delete a message someone else now holds.

Like an Event Hub, every message falls in one of `PARTITIONS` partitions, a stable hash of its
partition key (the device id for device messages; its msg id when it has none), fixed when it is
published. A receiver may ask for "partitions k of N" only, so N worker processes share a topic
and each key's messages go to one of them, in order (docs/decisions.md, "Worker processes").
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.sqlite_db import ThreadConnections
from common.sqlite_schema import Schema
from ingest.deadletter import DeadLetterSink


@dataclass(frozen=True)
class Lease:
    seq: int  # monotonically increasing per bus: the "sequence number"
    topic: str
    msg_id: str
    body: bytes
    properties: dict[str, Any]
    partition_key: str | None
    enqueued_at: float
    attempts: int  # including this delivery
    token: str


# As many as an Event Hubs namespace gives a hub at most on the standard tier: enough for any
# number of workers a machine runs, and N workers split them by `partition % N`.
PARTITIONS = 32


def partition_of(key: str) -> int:
    """The partition of a partition key: CRC-32 (stable across processes and releases, unlike
    Python's salted `hash`) modulo `PARTITIONS`."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % PARTITIONS


def _add_partitions(conn: sqlite3.Connection) -> None:
    """Version 2: each message's partition, computed for the messages a version-1 file holds."""
    conn.execute("ALTER TABLE messages ADD COLUMN partition_no INTEGER NOT NULL DEFAULT 0")
    rows = conn.execute("SELECT seq, coalesce(partition_key, msg_id) FROM messages").fetchall()
    conn.executemany("UPDATE messages SET partition_no = ? WHERE seq = ?",
                     [(partition_of(key), seq) for seq, key in rows])


# Version 1 is the file of the first release (created with IF NOT EXISTS: unversioned files have it).
BUS_SCHEMA = Schema("bus", [
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL, msg_id TEXT NOT NULL,
        body BLOB NOT NULL, properties TEXT NOT NULL, partition_key TEXT,
        enqueued_at REAL NOT NULL, visible_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, lease_token TEXT, last_error TEXT,
        UNIQUE (topic, msg_id));
    CREATE INDEX IF NOT EXISTS messages_due ON messages (topic, visible_at, seq)""",
    _add_partitions,
])

Partitions = tuple[int, int]  # (k, N): the partitions p with p % N == k


class LocalBus:
    def __init__(
        self,
        path: str | Path,
        *,
        dead_letters: DeadLetterSink | None = None,
        max_attempts: int = 5,
        base_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.dead_letters = dead_letters
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._now = now
        # An acknowledged message's bytes (a reading) are zeroed where that costs no extra
        # I/O, instead of lingering in free pages (sqlite.org/pragma.html#pragma_secure_delete).
        self._connections = ThreadConnections(self.path, BUS_SCHEMA, pragmas=["secure_delete = FAST"])

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._connections.transaction()

    def close(self) -> None:
        self._connections.close()

    # -- sending -----------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        body: bytes,
        *,
        msg_id: str | None = None,
        partition_key: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> bool:
        """Enqueue one message. A msg_id already pending on the topic is not enqueued again."""
        return self.publish_many(topic, [(body, msg_id, partition_key, properties)]) == 1

    def publish_many(
        self,
        topic: str,
        items: Iterable[tuple[bytes, str | None, str | None, dict[str, Any] | None]],
    ) -> int:
        now = self._now()
        rows = []
        for body, msg_id, key, props in items:
            msg_id = msg_id or uuid.uuid4().hex
            rows.append((topic, msg_id, body, json.dumps(props or {}), key, partition_of(key or msg_id), now, now))
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO messages (topic, msg_id, body, properties, partition_key,"
                " partition_no, enqueued_at, visible_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, topic: str, *, max_messages: int = 100, visibility_timeout_s: float = 60.0,
                partitions: Partitions | None = None) -> list[Lease]:
        """Lease up to max_messages visible messages, oldest first; of `partitions` only, if given."""
        now = self._now()
        token = uuid.uuid4().hex
        where, params = _partition_filter(partitions)
        with self._tx() as conn:
            rows = conn.execute(
                "UPDATE messages SET visible_at = ?, attempts = attempts + 1, lease_token = ?"
                " WHERE seq IN (SELECT seq FROM messages WHERE topic = ? AND visible_at <= ?" + where +
                " ORDER BY seq LIMIT ?)"
                " RETURNING seq, topic, msg_id, body, properties, partition_key, enqueued_at, attempts",
                (now + visibility_timeout_s, token, topic, now, *params, max_messages),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [
            Lease(r[0], r[1], r[2], bytes(r[3]), json.loads(r[4]), r[5], r[6], r[7], token) for r in rows
        ]

    def ack(self, leases: Iterable[Lease]) -> int:
        pairs = [(lease.seq, lease.token) for lease in leases]
        if not pairs:
            return 0
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM messages WHERE seq = ? AND lease_token = ?", pairs)
            return conn.total_changes - before

    def fail(self, lease: Lease, error: str, *, delay_s: float | None = None) -> str:
        """Record a failed delivery: retry later, or dead-letter after max_attempts.

        Returns "retry", "dead-lettered" or "stale" (the lease had expired and moved on)."""
        error = error[:2000]
        with self._tx() as conn:
            row = conn.execute(
                "SELECT attempts FROM messages WHERE seq = ? AND lease_token = ?", (lease.seq, lease.token)
            ).fetchone()
            if row is None:
                return "stale"
            attempts = int(row[0])
            if attempts < self.max_attempts or self.dead_letters is None:
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
                if delay_s is not None:  # the failure said when retrying makes sense (e.g. Retry-After)
                    delay = max(delay, min(delay_s, 3600.0))
                conn.execute(
                    "UPDATE messages SET visible_at = ?, last_error = ?, lease_token = NULL WHERE seq = ?",
                    (self._now() + delay, error, lease.seq),
                )
                return "retry"
            # Park the message first, then remove it: a crash in between leaves a duplicate
            # dead letter at worst, never a lost message.
            self.dead_letters.add(
                topic=lease.topic,
                reason="delivery_failed",
                detail=f"failed {attempts} times; last error: {error}",
                payload=lease.body,
                source="bus",
                properties={"msg_id": lease.msg_id, "partition_key": lease.partition_key, **lease.properties},
            )
            conn.execute("DELETE FROM messages WHERE seq = ?", (lease.seq,))
            return "dead-lettered"

    def release_all_leases(self, partitions: Partitions | None = None) -> int:
        """Make every leased message (of `partitions`, if given) visible now. Only for a host that
        owns the bus (or those partitions) alone, after a predecessor died holding leases."""
        where, params = _partition_filter(partitions)
        with self._tx() as conn:
            before = conn.total_changes
            conn.execute(
                "UPDATE messages SET visible_at = ?, lease_token = NULL WHERE lease_token IS NOT NULL" + where,
                (self._now(), *params),
            )
            return conn.total_changes - before

    def trim(self, topic: str, *, older_than_s: float) -> int:
        """Drop messages of a topic nobody consumes (workflow events kept for `vigil events tail`)
        once they are older than the retention."""
        with self._tx() as conn:
            before = conn.total_changes
            conn.execute(
                "DELETE FROM messages WHERE topic = ? AND enqueued_at < ?", (topic, self._now() - older_than_s)
            )
            return conn.total_changes - before

    def purge(self, topic: str, *, older_than_s: float, dry_run: bool = False) -> dict[str, int]:
        """Retention for a topic nobody consumes (workflow events): remove what is older than the
        retention, with its bytes overwritten (secure_delete) and the write-ahead log truncated.
        Messages of every other topic are pending work and are only counted."""
        conn = self._conn()
        cutoff = self._now() - older_than_s
        old = int(conn.execute("SELECT count(*) FROM messages WHERE topic = ? AND enqueued_at < ?",
                               (topic, cutoff)).fetchone()[0])
        pending = int(conn.execute("SELECT count(*) FROM messages WHERE topic != ?", (topic,)).fetchone()[0])
        if old and not dry_run:
            conn.execute("PRAGMA secure_delete = ON")
            try:
                self.trim(topic, older_than_s=older_than_s)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.execute("PRAGMA secure_delete = FAST")
        return {"deleted": old, "pending_kept": pending}

    # -- inspection --------------------------------------------------------------------------
    def pending(self, topic: str | None = None) -> int:
        if topic is None:
            return int(self._conn().execute("SELECT count(*) FROM messages").fetchone()[0])
        return int(self._conn().execute("SELECT count(*) FROM messages WHERE topic = ?", (topic,)).fetchone()[0])

    def next_visible_in(self, topic: str, partitions: Partitions | None = None) -> float | None:
        """Seconds until the next message of topic (and `partitions`) becomes visible (0 if one is
        visible now)."""
        where, params = _partition_filter(partitions)
        row = self._conn().execute("SELECT min(visible_at) FROM messages WHERE topic = ?" + where,
                                   (topic, *params)).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, row[0] - self._now())

    def backlog(self) -> dict[str, tuple[int, float]]:
        """topic -> (messages waiting, seconds since the oldest was enqueued)."""
        rows = self._conn().execute("SELECT topic, count(*), min(enqueued_at) FROM messages GROUP BY topic")
        return {r[0]: (int(r[1]), max(0.0, self._now() - r[2])) for r in rows}

    def topics(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT topic, count(*) FROM messages GROUP BY topic")
        return {r[0]: int(r[1]) for r in rows}


def _partition_filter(partitions: Partitions | None) -> tuple[str, tuple[int, ...]]:
    if partitions is None:
        return "", ()
    k, n = partitions
    if not 0 <= k < n <= PARTITIONS:
        raise ValueError(f"partitions {k} of {n}: need 0 <= k < N <= {PARTITIONS}")
    return " AND partition_no % ? = ?", (n, k)
