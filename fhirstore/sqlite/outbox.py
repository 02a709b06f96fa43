"""The store's event outbox and change counters: what a relay delivers, what caches compare.

A write records its Created/Updated/Deleted event in the `outbox` table in the write's own
transaction (`emit`). The row holds only what the event is made of (the version row has type, id
and time); `pending` renders the Event Grid envelope (`fhirstore.events`), which keeps the write
path free of a second JSON encoding. A relay reads `pending` and calls `done` after delivery.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from common.clock import parse_instant
from fhirstore.events import event_grid_event
from fhirstore.sqlite.schema import MAX_VERSION, VERSION_BITS


def emit(db: sqlite3.Connection, action: str, vkey: int) -> None:
    """Record the event of the version `vkey` (inside the write's transaction)."""
    db.execute("INSERT INTO outbox (vkey, action) VALUES (?, ?)", (vkey, action))


def pending(db: sqlite3.Connection, limit: int, *, account: str, topic: str) -> list[tuple[int, dict[str, Any]]]:
    """Undelivered events, oldest first, as (seq, Event Grid event of `fhirstore.events`)."""
    rows = db.execute(
        "SELECT o.seq, o.action, r.type, r.id, o.vkey, v.at FROM outbox o"
        " JOIN resources r ON r.rid = o.vkey >> 20 JOIN versions v ON v.vkey = o.vkey"
        " ORDER BY o.seq LIMIT ?", (limit,)).fetchall()
    return [(seq, event_grid_event(action=action, resource_type=rtype, resource_id=id,
                                   version_id=str(vkey & MAX_VERSION), account=account,
                                   topic=topic, at=parse_instant(at)))
            for seq, action, rtype, id, vkey, at in rows]


def done(db: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Forget delivered events (inside a write transaction; unknown seqs are ignored)."""
    db.executemany("DELETE FROM outbox WHERE seq = ?", [(int(s),) for s in seqs])


def find(db: sqlite3.Connection, versions: Sequence[tuple[str, str, str]]) -> list[int]:
    """The seqs of the undelivered events of these (type, id, version) versions."""
    found = []
    for rtype, id, version in versions:
        row = db.execute("SELECT o.seq FROM resources r JOIN outbox o ON o.vkey = (r.rid << ?) + ?"
                         " WHERE r.type = ? AND r.id = ?", (VERSION_BITS, int(version), rtype, id)).fetchone()
        if row is not None:
            found.append(int(row[0]))
    return found


def size(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def count_changes(db: sqlite3.Connection, types: Iterable[str]) -> None:
    """Move the change counter of each written type (inside the write's transaction)."""
    for resource_type in types:
        db.execute("INSERT INTO type_changes (type, n) VALUES (?, 1)"
                   " ON CONFLICT (type) DO UPDATE SET n = n + 1", (resource_type,))


def change_mark(db: sqlite3.Connection, types: Sequence[str]) -> tuple[tuple[str, int], ...]:
    marks = ",".join("?" * len(types))
    rows = db.execute(f"SELECT type, n FROM type_changes WHERE type IN ({marks})", tuple(types)).fetchall()
    return tuple(sorted((str(t), int(n)) for t, n in rows))
