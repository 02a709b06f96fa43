"""Where exported changes come from: the embedded SQLite FHIR store, read through its own file.

The store keeps, per resource, its current version, a deleted flag and the commit instant (``updated``,
microseconds since the epoch, the same instant as ``meta.lastUpdated``); versions keep the bodies. A deleted
resource is still a row, so the export can tell deletes apart and write them as tombstones, which a plain
paged FHIR search cannot (it only sees what is live).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fhirstore.sqlite import SCHEMA_VERSION

_VERSION_BITS = 20  # versions.vkey = rid << 20 | version (fhirstore/sqlite/schema.py)


@dataclass(frozen=True)
class Change:
    resource_type: str
    id: str
    version: int
    deleted: bool
    updated: int  # microseconds since the epoch, as the store orders commits
    last_updated: str  # meta.lastUpdated of this version (the delete's instant for a tombstone)
    body: str | None  # the stored JSON text; None for a delete


class SqliteSource:
    """Changes committed to the embedded store, by commit instant."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no embedded FHIR store at {self.path}")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise ValueError(f"the FHIR store at {self.path} has schema version {version}; "
                             f"this export reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def counts(self, after: int, upto: int) -> dict[str, int]:
        """Changes per resource type with ``after < updated <= upto``."""
        rows = self._db.execute(
            "SELECT type, count(*) FROM resources WHERE updated > ? AND updated <= ? GROUP BY type ORDER BY type",
            (after, upto))
        return dict(rows)

    def changes(self, resource_type: str, after: int, upto: int) -> Iterator[Change]:
        """The current state of every ``resource_type`` resource changed in the window, oldest first.

        A resource changed twice in one window is exported once, as it stands (the lake keeps states, not
        every intermediate version); one changed again after ``upto`` belongs to the next window.
        """
        cursor = self._db.execute(
            "SELECT r.id, r.version, r.deleted, r.updated, v.at, v.body FROM resources r "
            "JOIN versions v ON v.vkey = (r.rid << ?) + r.version "
            "WHERE r.type = ? AND r.updated > ? AND r.updated <= ? ORDER BY r.updated, r.rid",
            (_VERSION_BITS, resource_type, after, upto))
        for rid, version, deleted, updated, at, body in cursor:
            yield Change(resource_type, rid, version, bool(deleted), updated, at, body)

    def newest(self) -> int:
        """The newest commit instant in the store (0 when empty)."""
        return int(self._db.execute("SELECT coalesce(max(updated), 0) FROM resources").fetchone()[0])


class EmbeddedSource:
    """The embedded store as an export source: it sees deletes (every type's tombstones are exact)."""

    kind = "embedded"

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteSource(path)
        self.methods: dict[str, str] = {}

    @property
    def deletes_visible(self) -> dict[str, bool]:
        return {t: True for t in self.methods}

    def open(self, after: int, upto: int) -> _EmbeddedWindow:
        window = _EmbeddedWindow(self.db, after, upto)
        self.methods = {t: "embedded" for t in window.counts}
        return window

    def close(self) -> None:
        self.db.close()


class _EmbeddedWindow:
    def __init__(self, db: SqliteSource, after: int, upto: int) -> None:
        self.db, self.after, self.upto = db, after, upto
        self.counts = db.counts(after, upto)
        self.total: int | None = sum(self.counts.values())

    def types(self) -> list[str]:
        return list(self.counts)

    def changes(self, resource_type: str) -> Iterator[Change]:
        return self.db.changes(resource_type, self.after, self.upto)
