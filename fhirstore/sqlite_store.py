"""The embedded FHIR store: R4 JSON in one SQLite file, with search indexes and an event outbox.

Every write commits the new version, its search index rows and its Created/Updated/Deleted event
(in the outbox table) in ONE SQLite transaction, so an event exists exactly when its version does,
whatever crashes in between. A relay reads `outbox_pending()` and calls `outbox_done()` after
delivery. Layout (see `_SCHEMA`): `resources` holds each resource's current version, `versions`
every version's JSON, `tok`/`ref`/`dt` the index rows of the current version only.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl

from common import jsonnum  # decimals as written: 22.40 stays 22.40
from common.clock import Clock, SystemClock, iso, parse_instant
from common.sqlite_schema import Schema, SchemaError, migrate
from common.storage import connect as private_sqlite
from common.storage import tag_error
from fhirstore import readings_index
from fhirstore.errors import (
    FhirError,
    InvalidResource,
    InvalidSearch,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    ServerError,
)
from fhirstore.events import event_grid_event
from fhirstore.port import Resource, SearchParams, SearchResult, WriteResult
from fhirstore.search_params import (
    COLUMN_PARAMS,
    LOW_SELECTIVITY,
    MIN_TIME,
    REGISTRY,
    IndexRows,
    SearchParam,
    extractor_for,
    indexed_params,
    params_for,
    parse_date_range,
    parse_reference,
    primary_date,
    storage_for,
)

DEFAULT_TOPIC = "/subscriptions/local/resourceGroups/local/providers/Microsoft.HealthcareApis/workspaces/vigil"
DEFAULT_COUNT = 100
MAX_COUNT = 1000

# versions.vkey = rid << 20 | version: one integer primary key per version, so a version lookup
# and a resource's history are rowid range reads with no extra index.
_VERSION_BITS = 20
_MAX_VERSION = (1 << _VERSION_BITS) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
  rid INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  deleted INTEGER NOT NULL,
  updated INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_type_id ON resources (type, id);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (type, updated);
CREATE TABLE IF NOT EXISTS versions (
  vkey INTEGER PRIMARY KEY,
  method TEXT NOT NULL,
  at TEXT NOT NULL,
  body TEXT
);
CREATE TABLE IF NOT EXISTS params (pid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS tok (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL,
  PRIMARY KEY (rid, pid, code, system)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tok_value ON tok (pid, code, system);
CREATE TABLE IF NOT EXISTS ref (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL,
  hi INTEGER NOT NULL,
  PRIMARY KEY (rid, pid, target_id, target_type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ref_value ON ref (pid, target_id, hi, target_type);
CREATE TABLE IF NOT EXISTS dt (
  rid INTEGER NOT NULL, pid INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
  PRIMARY KEY (rid, pid, lo, hi)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dt_lo ON dt (pid, lo);
CREATE INDEX IF NOT EXISTS dt_hi ON dt (pid, hi);
CREATE TABLE IF NOT EXISTS spans (pid INTEGER PRIMARY KEY, span INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, vkey INTEGER NOT NULL, action TEXT NOT NULL
);
"""
# Version 2: per-type change counters (caches check them), the outbox looked up by version, and
# the readings index the rules' windows read (fhirstore/readings_index.py; built on open below).
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS type_changes (type TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_vkey ON outbox (vkey);
""" + readings_index.SCHEMA
# Step i takes a file from version i to i + 1 (common/sqlite_schema.py); a table change is a new step.
FHIR_SCHEMA = Schema("FHIR store", [_SCHEMA, _SCHEMA_2])
SCHEMA_VERSION = FHIR_SCHEMA.version


_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONTROL = frozenset({"_count", "_offset", "_sort", "_summary", "_total"})
_COMPILED_MAX = 2048  # compiled searches kept per store
_DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"})
_CONDITIONAL_ONLY = "conditional criteria take search parameters only"
_F = TypeVar("_F", bound=Callable[..., Any])


class _Bounds(NamedTuple):
    """Necessary conditions a date clause puts on a matching range [lo, hi] (None: none)."""

    hi_min: int | None  # hi >= hi_min
    hi_max: int | None  # hi <= hi_max
    lo_max: int | None  # lo <= lo_max, so hi <= lo_max + the parameter's widest range


class _Rows(NamedTuple):
    pids: tuple[int, ...]
    target_type: str | None = None


_NO_ROWS = _Rows((-1,))


class _Current(NamedTuple):
    rid: int
    version: int
    deleted: bool


@dataclass
class _Tx:
    db: sqlite3.Connection
    iso: str
    updated: int  # lastUpdated in microseconds, truncated to the millisecond `iso` shows
    spans: dict[int, int] = field(default_factory=dict)  # widest date ranges written, per parameter id
    types: set[str] = field(default_factory=set)  # resource types written (their change counters move)


class _Handle:
    """Holds one thread's connection; when the thread ends it drops this and the connection closes."""

    __slots__ = ("db", "pid", "__weakref__")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pid = os.getpid()


def _typed_errors(method: _F) -> _F:
    """SQLite failures (disk full, locked past the timeout, I/O) leave as the port's ServerError."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            tag_error(exc, self._path)  # which file, for the CLI's storage-fault line
            raise ServerError(f"the embedded FHIR store failed ({method.__name__}): {exc}") from exc

    return wrapper  # type: ignore[return-value]


class SqliteFhirStore:
    """`FhirStore` on SQLite. Thread-safe (one connection per thread) and multi-process safe (WAL)."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        account: str = "localhost",
        topic: str = DEFAULT_TOPIC,
    ) -> None:
        self._path = str(path)
        self._clock = clock or SystemClock()
        self._account = account
        self._topic = topic
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closers: list[tuple[int, weakref.finalize]] = []
        self._closed = False
        self._pids: dict[str, int] = {}
        self._type_pids: dict[str, dict[str, int]] = {}
        self._primary_rows: dict[str, tuple[str, ...]] = {}
        self._search_rows: dict[str, dict[str, _Rows]] = {}
        self._spans: dict[int, int] = {}  # committed widest (hi - lo) per date parameter id
        # Compiled searches by (type, parameters): the same lookups (a patient's care plans, a
        # device by identifier) repeat for every reading. Only for types whose index rows are
        # settled (_search_rows), so a compiled query never outlives the parameter ids it uses,
        # and not for date searches (a reading's window names its own instant: it never repeats).
        self._compiled: dict[tuple[str, tuple[tuple[str, str], ...]], _Query] = {}
        self._init_schema()

    # ------------------------------------------------------------ connections

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise ServerError("the embedded FHIR store is closed")
        handle = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid():
            return handle.db
        # After a fork the parent's handle must never be used (nor closed) in the child.
        # Plain connections on this hot path (a wrapped cursor halves read throughput): errors are
        # tagged with the file where they leave the store instead (_typed_errors, transactions).
        db = private_sqlite(self._path, tag_errors=False, timeout=30, isolation_level=None,
                            check_same_thread=False, cached_statements=256)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("PRAGMA synchronous = NORMAL")  # with WAL, commits survive a crashed process
            db.execute("PRAGMA cache_size = -32000")
        except sqlite3.Error as exc:
            tag_error(exc, self._path)
            db.close()
            raise
        handle = _Handle(db)
        closer = weakref.finalize(handle, db.close)
        with self._lock:
            self._closers = [(p, c) for p, c in self._closers if c.alive]
            self._closers.append((handle.pid, closer))
        self._local.handle = handle
        return db

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        with self._lock:
            self._closed = True
            closers, self._closers = self._closers, []
        for pid, closer in closers:
            if pid == os.getpid():
                closer()

    def __enter__(self) -> SqliteFhirStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_schema(self) -> None:
        try:
            self._db().execute("PRAGMA journal_mode = WAL")
            migrate(self._db(), FHIR_SCHEMA, self._path)
            with self._write_tx() as tx:  # a file written before the readings index gets it once
                readings_index.build(tx.db, tx.iso, _VERSION_BITS)
            self._ensure_types(REGISTRY)
            self._spans.update(self._db().execute("SELECT pid, span FROM spans"))
        except SchemaError as exc:
            raise ServerError(str(exc)) from exc
        except sqlite3.Error as exc:
            tag_error(exc, self._path)
            raise ServerError(f"cannot open the FHIR store at {self._path}: {exc}") from exc

    @contextmanager
    def _write_tx(self) -> Iterator[_Tx]:
        """One IMMEDIATE transaction: writers queue here (busy_timeout) instead of failing later."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            tag_error(exc, self._path)
            raise ServerError(f"the embedded FHIR store is unavailable: {exc}") from exc
        try:
            now = self._clock.now().astimezone(UTC)
            millis = now.replace(microsecond=now.microsecond // 1000 * 1000)
            tx = _Tx(db, iso(now), (millis - _EPOCH) // timedelta(microseconds=1))
            yield tx
        except BaseException:
            if db.in_transaction:  # some SQLite errors have rolled back already
                db.execute("ROLLBACK")
            raise
        try:
            for resource_type in tx.types:
                db.execute("INSERT INTO type_changes (type, n) VALUES (?, 1)"
                           " ON CONFLICT (type) DO UPDATE SET n = n + 1", (resource_type,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            tag_error(exc, self._path)
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise ServerError(f"the embedded FHIR store could not commit: {exc}") from exc
        for pid, span in tx.spans.items():  # only committed widths may spare later upserts
            self._spans[pid] = max(span, self._spans.get(pid, -1))

    @contextmanager
    def _read_tx(self) -> Iterator[sqlite3.Connection]:
        """A snapshot for reads made of several statements (count + page)."""
        db = self._db()
        if db.in_transaction:  # already inside a write (transaction bundle GET entries)
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # ------------------------------------------------------------ search parameter ids

    def _ensure_types(self, types: Sequence[str] | Mapping[str, Any]) -> None:
        """Give every (type, parameter) a small integer id, committed before any write uses it."""
        wanted = [t for t in types if t not in self._type_pids]
        if not wanted:
            return
        names = [f"{t}.{p}" for t in wanted for p in indexed_params(t)]
        if any(n not in self._pids for n in names):
            self._load_pids()
        if any(n not in self._pids for n in names):
            with self._write_tx() as tx:
                tx.db.executemany("INSERT OR IGNORE INTO params (name) VALUES (?)", [(n,) for n in names])
            self._load_pids()
        for t in wanted:
            primary = primary_date(t)
            self._primary_rows[t] = storage_for(t)[primary].names if primary else ()
            self._type_pids[t] = {p: self._pids[f"{t}.{p}"] for p in indexed_params(t)}

    def _load_pids(self) -> None:
        self._pids.update((name, pid) for pid, name in self._db().execute("SELECT pid, name FROM params"))

    def _search_pids(self, resource_type: str) -> dict[str, _Rows]:
        """Where each parameter's index rows are: parameter ids (-1: never written) and, for an
        alias such as `patient`, the one target type it keeps."""
        found = self._search_rows.get(resource_type)
        if found is not None:
            return found
        pids = self._type_pids.get(resource_type)
        if pids is None:
            self._load_pids()  # another process may have written this type
            pids = {p: self._pids.get(f"{resource_type}.{p}", -1) for p in indexed_params(resource_type)}
        found = {name: _Rows(tuple(pids[n] for n in where.names), where.target_type)
                 for name, where in storage_for(resource_type).items()}
        if resource_type in self._type_pids:
            self._search_rows[resource_type] = found
        return found

    # ------------------------------------------------------------ reads

    @_typed_errors
    def read(self, resource_type: str, id: str) -> Resource:
        row = self._db().execute(
            "SELECT v.body FROM resources r JOIN versions v ON v.vkey = (r.rid << 20) + r.version"
            " WHERE r.type = ? AND r.id = ?", (resource_type, id)).fetchone()
        if row is None:
            raise ResourceNotFound(f"{resource_type}/{id} not found")
        if row[0] is None:
            raise ResourceGone(f"{resource_type}/{id} was deleted")
        return jsonnum.loads(row[0])

    @_typed_errors
    def vread(self, resource_type: str, id: str, version_id: str) -> Resource:
        version = int(version_id) if str(version_id).isdigit() else 0
        row = None
        if 0 < version <= _MAX_VERSION:
            row = self._db().execute(
                "SELECT v.body FROM resources r JOIN versions v ON v.vkey = (r.rid << 20) + ?"
                " WHERE r.type = ? AND r.id = ?", (version, resource_type, id)).fetchone()
        if row is None:
            raise ResourceNotFound(f"{resource_type}/{id}/_history/{version_id} not found")
        if row[0] is None:
            raise ResourceGone(f"{resource_type}/{id}/_history/{version_id} is a deletion")
        return jsonnum.loads(row[0])

    @_typed_errors
    def history(self, resource_type: str, id: str) -> Resource:
        rows = self._db().execute(
            "SELECT v.vkey, v.method, v.at, v.body FROM resources r JOIN versions v"
            " ON v.vkey BETWEEN (r.rid << 20) AND (r.rid << 20) + 1048575"
            " WHERE r.type = ? AND r.id = ? ORDER BY v.vkey DESC", (resource_type, id)).fetchall()
        if not rows:
            raise ResourceNotFound(f"{resource_type}/{id} not found")
        entries = []
        for vkey, method, at, body in rows:
            version = vkey & _MAX_VERSION
            status = 204 if method == "DELETE" else 201 if version == 1 or method == "POST" else 200
            entry: dict[str, Any] = {
                "fullUrl": f"{resource_type}/{id}",
                "request": {"method": method, "url": resource_type if method == "POST" else f"{resource_type}/{id}"},
                "response": {"status": _status_text(status), "etag": f'W/"{version}"', "lastModified": at},
            }
            if body is not None:
                entry["resource"] = jsonnum.loads(body)
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}

    # ------------------------------------------------------------ writes

    @_typed_errors
    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        resource_type = _check_resource(resource, need_id=False)
        criteria = _criteria(if_none_exist, "If-None-Exist") if if_none_exist is not None else None
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            if criteria is not None:
                found = self._match(tx.db, resource_type, criteria, f"conditional create of {resource_type}")
                if found is not None:
                    return self._existing(tx.db, resource_type, found)
            return self._insert(tx, resource_type, str(uuid.uuid4()), resource, "POST")

    @_typed_errors
    def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        resource_type = _check_resource(resource, need_id=True)
        expected = _etag_version(if_match) if if_match is not None else None
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            return self._update_in(tx, resource_type, resource["id"], resource, expected)

    @_typed_errors
    def delete(self, resource_type: str, id: str) -> WriteResult:
        _check_type(resource_type, InvalidResource)
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            return self._delete_in(tx, resource_type, id)

    def _lookup(self, db: sqlite3.Connection, resource_type: str, id: str) -> _Current | None:
        row = db.execute("SELECT rid, version, deleted FROM resources WHERE type = ? AND id = ?",
                         (resource_type, id)).fetchone()
        return _Current(row[0], row[1], bool(row[2])) if row else None

    def _existing(self, db: sqlite3.Connection, resource_type: str, found: tuple[int, str, int]) -> WriteResult:
        rid, id, version = found
        body = db.execute("SELECT body FROM versions WHERE vkey = ?", ((rid << _VERSION_BITS) + version,)).fetchone()
        return WriteResult("exists", jsonnum.loads(body[0]), resource_type, id, str(version))

    def _insert(self, tx: _Tx, resource_type: str, id: str, resource: Resource, method: str) -> WriteResult:
        doc = self._put_version(tx, resource_type, id, resource, method, None)
        return WriteResult("created", doc, resource_type, id, "1")

    def _update_in(self, tx: _Tx, resource_type: str, id: str, resource: Resource,
                   expected: str | None) -> WriteResult:
        current = self._lookup(tx.db, resource_type, id)
        live = current if current is not None and not current.deleted else None
        if expected is not None and (live is None or str(live.version) != expected):
            have = f"the current version is {live.version}" if live else "it does not exist"
            raise PreconditionFailed(f"{resource_type}/{id}: If-Match expects version {expected} but {have}")
        if live is not None:
            old = self._body(tx.db, live.rid, live.version)
            if _same_content(old, resource):
                return WriteResult("unchanged", old, resource_type, id, str(live.version))
        doc = self._put_version(tx, resource_type, id, resource, "PUT", current)
        return WriteResult("updated" if live else "created", doc, resource_type, id, doc["meta"]["versionId"])

    def _delete_in(self, tx: _Tx, resource_type: str, id: str) -> WriteResult:
        current = self._lookup(tx.db, resource_type, id)
        if current is None or current.deleted:
            return WriteResult("gone", None, resource_type, id, str(current.version) if current else None)
        version = _next_version(current, resource_type, id)
        tx.types.add(resource_type)
        db = tx.db
        db.execute("UPDATE resources SET version = ?, deleted = 1, updated = ? WHERE rid = ?",
                   (version, tx.updated, current.rid))
        db.execute("INSERT INTO versions (vkey, method, at, body) VALUES (?, 'DELETE', ?, NULL)",
                   ((current.rid << _VERSION_BITS) + version, tx.iso))
        self._drop_index(db, current.rid)
        if resource_type == "Observation":
            readings_index.drop(db, current.rid)
        self._emit(tx, "deleted", current.rid, version)
        return WriteResult("deleted", None, resource_type, id, str(version))

    def _put_version(self, tx: _Tx, resource_type: str, id: str, resource: Resource, method: str,
                     current: _Current | None) -> Resource:
        version = 1 if current is None else _next_version(current, resource_type, id)
        tx.types.add(resource_type)
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = tx.iso
        doc: Resource = {"resourceType": resource_type, "id": id, "meta": meta}
        for key, value in resource.items():
            if key not in doc:
                doc[key] = value
        try:
            rows = extractor_for(resource_type)(doc)
        except ValueError as exc:
            raise InvalidResource(f"{resource_type}/{id}: {exc}") from None
        primary = self._primary_rows.get(resource_type, ())
        if primary and sum(1 for p, _, _ in rows.dates if p in primary) > 1:
            paths = " or ".join(params_for(resource_type)[primary[0]].paths)
            raise InvalidResource(f"{resource_type}/{id}: {paths} may hold only one value")
        try:
            body = jsonnum.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidResource(f"{resource_type}/{id} is not valid JSON content: {exc}") from None
        db = tx.db
        if current is None:
            rid = db.execute("INSERT INTO resources (type, id, version, deleted, updated) VALUES (?, ?, 1, 0, ?)",
                             (resource_type, id, tx.updated)).lastrowid
        else:
            rid = current.rid
            db.execute("UPDATE resources SET version = ?, deleted = 0, updated = ? WHERE rid = ?",
                       (version, tx.updated, rid))
            if not current.deleted:
                self._drop_index(db, rid)
                if resource_type == "Observation":
                    readings_index.drop(db, rid)
        db.execute("INSERT INTO versions (vkey, method, at, body) VALUES (?, ?, ?, ?)",
                   ((rid << _VERSION_BITS) + version, method, tx.iso, body))
        self._index(tx, resource_type, rid, rows)
        if resource_type == "Observation":
            readings_index.write(db, doc, rows, rid, version)
        self._emit(tx, "created" if current is None or current.deleted else "updated", rid, version)
        return doc

    def _body(self, db: sqlite3.Connection, rid: int, version: int) -> Resource:
        row = db.execute("SELECT body FROM versions WHERE vkey = ?", ((rid << _VERSION_BITS) + version,)).fetchone()
        return jsonnum.loads(row[0])

    def _index(self, tx: _Tx, resource_type: str, rid: int, rows: IndexRows) -> None:
        db, pids = tx.db, self._type_pids[resource_type]
        if rows.tokens:
            db.executemany("INSERT INTO tok (rid, pid, code, system) VALUES (?, ?, ?, ?)",
                           [(rid, pids[p], code, system) for p, code, system in rows.tokens])
        if rows.refs:
            dated = self._primary_rows.get(resource_type, ())
            hi = max((high for p, _, high in rows.dates if p in dated), default=MIN_TIME)
            db.executemany("INSERT INTO ref (rid, pid, target_id, target_type, hi) VALUES (?, ?, ?, ?, ?)",
                           [(rid, pids[p], target, kind, hi) for p, target, kind in rows.refs])
        if rows.dates:
            dates = [(rid, pids[p], lo, hi) for p, lo, hi in rows.dates]
            db.executemany("INSERT INTO dt (rid, pid, lo, hi) VALUES (?, ?, ?, ?)", dates)
            self._widen_spans(tx, dates)

    def _widen_spans(self, tx: _Tx, dates: list[tuple[int, int, int, int]]) -> None:
        """Keep the widest date range per parameter. A search for values starting before B then
        knows their ends lie before B + widest, which bounds the index range it reads."""
        for _, pid, lo, hi in dates:
            if hi - lo > max(self._spans.get(pid, -1), tx.spans.get(pid, -1)):
                tx.spans[pid] = hi - lo
                tx.db.execute("INSERT INTO spans (pid, span) VALUES (?, ?) ON CONFLICT (pid) DO UPDATE"
                              " SET span = excluded.span WHERE excluded.span > span", (pid, hi - lo))

    @staticmethod
    def _drop_index(db: sqlite3.Connection, rid: int) -> None:
        db.execute("DELETE FROM tok WHERE rid = ?", (rid,))
        db.execute("DELETE FROM ref WHERE rid = ?", (rid,))
        db.execute("DELETE FROM dt WHERE rid = ?", (rid,))

    @staticmethod
    def _emit(tx: _Tx, action: str, rid: int, version: int) -> None:
        """Record the version's event. The row holds only what the event is made of (the version
        row has type, id and time); `outbox_pending` renders the Event Grid envelope, which keeps
        the write path free of a second JSON encoding."""
        tx.db.execute("INSERT INTO outbox (vkey, action) VALUES (?, ?)", ((rid << _VERSION_BITS) + version, action))

    # ------------------------------------------------------------ outbox (for the event relay)

    @_typed_errors
    def outbox_pending(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Undelivered events, oldest first, as (seq, Event Grid event of `fhirstore.events`)."""
        rows = self._db().execute(
            "SELECT o.seq, o.action, r.type, r.id, o.vkey, v.at FROM outbox o"
            " JOIN resources r ON r.rid = o.vkey >> 20 JOIN versions v ON v.vkey = o.vkey"
            " ORDER BY o.seq LIMIT ?", (limit,)).fetchall()
        return [(seq, event_grid_event(action=action, resource_type=rtype, resource_id=id,
                                       version_id=str(vkey & _MAX_VERSION), account=self._account,
                                       topic=self._topic, at=parse_instant(at)))
                for seq, action, rtype, id, vkey, at in rows]

    @_typed_errors
    def outbox_done(self, seqs: Sequence[int]) -> None:
        """Forget delivered events (unknown seqs are ignored, so a retried call is harmless)."""
        if not seqs:
            return
        with self._write_tx() as tx:
            tx.db.executemany("DELETE FROM outbox WHERE seq = ?", [(int(s),) for s in seqs])

    @_typed_errors
    def outbox_find(self, versions: Sequence[tuple[str, str, str]]) -> list[int]:
        """The seqs of the undelivered events of these (type, id, version) versions: a host that
        acted on them in process settles them with `outbox_done` (an event it never acted on
        stays for the relay)."""
        db = self._db()
        found = []
        for rtype, id, version in versions:
            row = db.execute("SELECT o.seq FROM resources r JOIN outbox o ON o.vkey = (r.rid << ?) + ?"
                             " WHERE r.type = ? AND r.id = ?", (_VERSION_BITS, int(version), rtype, id)).fetchone()
            if row is not None:
                found.append(row[0])
        return found

    @_typed_errors
    def outbox_size(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @_typed_errors
    def change_mark(self, types: Sequence[str]) -> tuple[tuple[str, int], ...]:
        """A value that changes whenever a resource of one of `types` is written or deleted, by
        any process on this file (a counter per type, moved in the write's own transaction):
        caches compare it to know whether what they hold may be stale."""
        marks = ",".join("?" * len(types))
        return tuple(sorted(self._db().execute(
            f"SELECT type, n FROM type_changes WHERE type IN ({marks})", tuple(types)).fetchall()))

    # ------------------------------------------------------------ readings (fhirstore.readings_index)

    @_typed_errors
    def readings_window(self, patient_ref: str, metrics: Sequence[str] | set[str] | frozenset[str],
                        since: str) -> list[Any]:
        """The readings `rules.readings` finds in the patient's Observations of `metrics` that
        match `date=ge<since>`, from the index written with each Observation (no JSON read)."""
        return readings_index.window(self._db(), patient_ref, metrics, since)

    # ------------------------------------------------------------ search

    @_typed_errors
    def search(self, resource_type: str, params: SearchParams | None = None) -> SearchResult:
        _check_type(resource_type, InvalidSearch)
        pairs = _pairs(params)
        query = self._compile(resource_type, pairs)
        with self._read_tx() as db:
            return self._run(db, query, pairs)

    def _run(self, db: sqlite3.Connection, query: _Query, pairs: list[tuple[str, str]]) -> SearchResult:
        if query.summary_count or query.count == 0:
            return SearchResult([], self._count(db, query), None)
        # One row past the page: when it is not there, the total is known without a COUNT(*)
        # (most searches here fit one page: a patient's care plans, a window of readings).
        page = db.execute(
            f"SELECT r.rid, r.version {query.sql} ORDER BY {query.order} LIMIT ? OFFSET ?",
            [*query.args, *query.order_args, query.count + 1, query.offset]).fetchall()
        if len(page) <= query.count and (page or query.offset == 0):
            total = query.offset + len(page)
        else:
            total = self._count(db, query)
            page = page[:query.count]
        if not page:
            return SearchResult([], total, None)
        keys = [(rid << _VERSION_BITS) + version for rid, version in page]
        bodies = dict(db.execute(f"SELECT vkey, body FROM versions WHERE vkey IN ({_marks(len(keys))})", keys))
        resources = [jsonnum.loads(bodies[k]) for k in keys]
        next_params = None
        if query.offset + query.count < total:
            next_params = _next_params(pairs, query.offset + query.count)
        return SearchResult(resources, total, next_params)

    @staticmethod
    def _count(db: sqlite3.Connection, query: _Query) -> int:
        return int(db.execute(f"SELECT COUNT(*) {query.sql}", query.args).fetchone()[0])

    def _match(self, db: sqlite3.Connection, resource_type: str, criteria: list[tuple[str, str]],
               what: str) -> tuple[int, str, int] | None:
        """The one live resource the criteria select, None for none; PreconditionFailed for several."""
        query = self._compile(resource_type, criteria)
        if query.controls:
            raise InvalidSearch(f"{what}: {_CONDITIONAL_ONLY}, not {', '.join(sorted(query.controls))}")
        rows = db.execute(f"SELECT r.rid, r.id, r.version {query.sql} LIMIT 2", query.args).fetchall()
        if len(rows) > 1:
            shown = "&".join(f"{k}={v}" for k, v in criteria)
            raise PreconditionFailed(f"{what}: criteria '{shown}' match more than one resource")
        return rows[0] if rows else None

    def _compile(self, resource_type: str, pairs: list[tuple[str, str]]) -> _Query:
        key = (resource_type, tuple(pairs))
        query = self._compiled.get(key)
        if query is None:
            query = self._compile_new(resource_type, pairs)
            if resource_type in self._search_rows and not query.dated:
                if len(self._compiled) >= _COMPILED_MAX:
                    self._compiled.clear()  # plain and thread-safe; refills with what repeats
                self._compiled[key] = query
        return query

    def _compile_new(self, resource_type: str, pairs: list[tuple[str, str]]) -> _Query:
        known = params_for(resource_type)
        pids = self._search_pids(resource_type)
        query = _Query(resource_type, primary_date(resource_type))
        clauses: list[_Clause] = []
        for key, value in pairs:
            name, _, modifier = key.partition(":")
            if name in _CONTROL:
                query.control(name, modifier, value, known)
                continue
            param = known.get(name)
            if param is None:
                raise InvalidSearch(_unknown_param(resource_type, name, known))
            if value == "":
                raise InvalidSearch(f"search parameter '{key}' of {resource_type} has an empty value")
            clauses.append(_clause(resource_type, name, modifier, value, param, pids.get(name, _NO_ROWS)))
        query.assemble(clauses, pids)
        return query

    # ------------------------------------------------------------ transaction and batch bundles

    @_typed_errors
    def transaction(self, bundle: Resource) -> Resource:
        kind = _bundle_kind(bundle)
        entries = [_parse_entry(i, e) for i, e in enumerate(bundle.get("entry") or [])]
        if kind == "batch":
            return {"resourceType": "Bundle", "type": "batch-response",
                    "entry": [self._batch_entry(e) for e in entries]}
        for e in entries:
            if isinstance(e, FhirError):
                raise e
        self._ensure_types(sorted({e.resource_type for e in entries}))  # type: ignore[union-attr]
        with self._write_tx() as tx:
            responses = self._transaction_in(tx, entries)  # type: ignore[arg-type]
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def _transaction_in(self, tx: _Tx, entries: list[_Entry]) -> list[dict[str, Any]]:
        """FHIR's processing order: deletes, then creates, then updates, then reads; `urn:uuid:`
        fullUrls of created/updated entries are replaced by their ids in every reference."""
        responses: list[dict[str, Any]] = [{} for _ in entries]
        by_method = {m: [e for e in entries if e.method == m] for m in ("DELETE", "POST", "PUT", "GET")}
        for e in by_method["DELETE"]:
            responses[e.index] = _guard(e, lambda e=e: self._apply_write(tx, e))
        local_ids: dict[str, str] = {}
        for e in by_method["POST"] + by_method["PUT"]:
            _guard(e, lambda e=e: self._assign_id(tx, e))
            if e.full_url and e.full_url.startswith(("urn:uuid:", "urn:oid:")):
                local_ids[e.full_url] = f"{e.resource_type}/{e.id}"
        for e in by_method["POST"] + by_method["PUT"]:
            if local_ids:
                e.resource = _resolve_references(e.resource, local_ids)
            responses[e.index] = _guard(e, lambda e=e: self._apply_write(tx, e))
        for e in by_method["GET"]:
            responses[e.index] = _guard(e, lambda e=e: self._apply_get(tx.db, e))
        return responses

    def _assign_id(self, tx: _Tx, e: _Entry) -> None:
        """Decide the id a POST or conditional PUT will write, before any of them writes."""
        if e.method == "POST":
            found = None
            if e.criteria is not None:
                found = self._match(tx.db, e.resource_type, e.criteria, f"conditional create of {e.resource_type}")
            e.existing = found
            e.id = found[1] if found else str(uuid.uuid4())
        elif e.criteria is not None:
            found = self._match(tx.db, e.resource_type, e.criteria, f"conditional update of {e.resource_type}")
            body_id = e.resource.get("id")
            if found and body_id not in (None, found[1]):
                raise InvalidResource(f"conditional update matched {e.resource_type}/{found[1]} "
                                      f"but the resource has id {body_id!r}")
            e.id = found[1] if found else body_id or str(uuid.uuid4())

    def _apply_write(self, tx: _Tx, e: _Entry) -> dict[str, Any]:
        if e.method == "POST":
            if e.existing is not None:
                return _write_response(self._existing(tx.db, e.resource_type, e.existing))
            return _write_response(self._insert(tx, e.resource_type, e.id, e.resource, "POST"))  # type: ignore[arg-type]
        if e.method == "PUT":
            resource = {**e.resource, "id": e.id}
            return _write_response(self._update_in(tx, e.resource_type, e.id, resource, e.if_match))  # type: ignore[arg-type]
        if e.criteria is not None:
            found = self._match(tx.db, e.resource_type, e.criteria, f"conditional delete of {e.resource_type}")
            if found is None:
                return {"response": {"status": _status_text(204)}}
            e.id = found[1]
        return _write_response(self._delete_in(tx, e.resource_type, e.id))  # type: ignore[arg-type]

    def _apply_get(self, db: sqlite3.Connection, e: _Entry) -> dict[str, Any]:
        if e.id is None:
            result = self._run(db, self._compile(e.resource_type, e.criteria or []), e.criteria or [])
            bundle = {"resourceType": "Bundle", "type": "searchset", "total": result.total,
                      "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                                for r in result.resources]}
            return {"resource": bundle, "response": {"status": _status_text(200)}}
        if e.history == "all":
            return {"resource": self.history(e.resource_type, e.id), "response": {"status": _status_text(200)}}
        found = self.vread(e.resource_type, e.id, e.history) if e.history else self.read(e.resource_type, e.id)
        meta = found.get("meta", {})
        return {"resource": found, "response": {"status": _status_text(200), "etag": f'W/"{meta.get("versionId")}"',
                                                "lastModified": meta.get("lastUpdated")}}

    def _batch_entry(self, e: _Entry | FhirError) -> dict[str, Any]:
        if isinstance(e, FhirError):
            return _error_response(e)
        try:
            if e.method == "GET":
                with self._read_tx() as db:
                    return self._apply_get(db, e)
            self._ensure_types([e.resource_type])
            with self._write_tx() as tx:
                if e.method in ("POST", "PUT"):
                    self._assign_id(tx, e)
                return self._apply_write(tx, e)
        except FhirError as exc:
            return _error_response(exc)


# ---------------------------------------------------------------- search compilation


@dataclass
class _Clause:
    """One AND-ed search parameter, as a filter over the outer row `r` and, when its index can
    produce candidate rows, as a driver condition over that index table (alias `x`)."""

    name: str
    rank: int  # lower drives the query better; 9: never drives
    filter: str
    filter_args: list[Any]
    table: str | None = None
    where: str = ""
    where_args: list[Any] = field(default_factory=list)
    bounds: _Bounds | None = None  # date clauses: what every match's range must satisfy


@dataclass
class _Query:
    resource_type: str
    primary_date: str | None
    count: int = DEFAULT_COUNT
    offset: int = 0
    summary_count: bool = False
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (parameter, descending)
    controls: set[str] = field(default_factory=set)
    sql: str = ""
    args: list[Any] = field(default_factory=list)
    order: str = "r.rid"
    order_args: list[Any] = field(default_factory=list)
    dated: bool = False  # has a date or _lastUpdated clause

    def control(self, name: str, modifier: str, value: str, known: Mapping[str, SearchParam]) -> None:
        if modifier:
            raise InvalidSearch(f"'{name}' takes no modifier (got '{name}:{modifier}')")
        if name in self.controls:
            raise InvalidSearch(f"'{name}' may appear only once in a search")
        self.controls.add(name)
        if name == "_count":
            self.count = min(_non_negative(name, value), MAX_COUNT)
        elif name == "_offset":
            self.offset = _non_negative(name, value)
        elif name == "_summary":
            if value not in ("count", "false"):
                raise InvalidSearch(f"_summary={value} is not supported (use count or false)")
            self.summary_count = value == "count"
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise InvalidSearch(f"_total must be none, estimate or accurate, not {value!r}")
        else:
            for key in value.split(","):
                sort_name = key.strip().removeprefix("-")
                if sort_name not in COLUMN_PARAMS and getattr(known.get(sort_name), "kind", None) != "date":
                    dates = sorted(n for n, p in known.items() if p.kind == "date" and n not in COLUMN_PARAMS)
                    raise InvalidSearch(f"cannot sort {self.resource_type} by '{sort_name}': sort keys are _id, "
                                        f"_lastUpdated{''.join(', ' + d for d in dates)}")
                self.sort.append((sort_name, key.strip().startswith("-")))

    def assemble(self, clauses: list[_Clause], pids: Mapping[str, _Rows]) -> None:
        self.dated = any(c.bounds is not None or c.name == "_lastUpdated" for c in clauses)
        drivers = [c for c in clauses if c.table is not None]
        driver = min(drivers, key=lambda c: c.rank) if drivers else None
        with_hi = driver is not None and driver.table == "ref"
        if driver is None:
            head = "FROM resources AS r"
            where, args = ["r.type = ?", "r.deleted = 0"], [self.resource_type]
        else:
            sql, args = self._driver(driver, clauses, pids)
            # CROSS JOIN fixes the join order: walk the chosen index first, then probe the rest.
            head = f"FROM ({sql}) AS d CROSS JOIN resources AS r"
            where = ["r.rid = d.rid", "r.deleted = 0"]
        for clause in clauses:
            if clause is not driver:
                where.append(clause.filter)
                args.extend(clause.filter_args)
        self.sql = f"{head} WHERE {' AND '.join(where)}"
        self.args = args
        self._order(pids, with_hi)

    def _driver(self, driver: _Clause, clauses: list[_Clause], pids: Mapping[str, _Rows]) -> tuple[str, list[Any]]:
        sql, args = f"SELECT DISTINCT x.rid AS rid FROM {driver.table} x WHERE {driver.where}", list(driver.where_args)
        if driver.table == "resources":
            return sql.replace("DISTINCT ", ""), args
        if driver.table == "ref":
            # Reference rows carry the upper end of the resource's primary date, so "this patient's
            # readings in a window" reads only that part of the patient's history.
            sql = sql.replace("x.rid AS rid", "x.rid AS rid, x.hi AS hi")
            dated = self.primary_date
        elif driver.table == "dt":
            dated = driver.name
        else:
            return sql, args
        # Bounds of several clauses may be combined on one row only for the primary date, which
        # holds one value per resource; any other date parameter uses the driving clause alone.
        if dated == self.primary_date:
            bounds = [c.bounds for c in clauses if c.name == dated and c.bounds is not None]
        else:
            bounds = [driver.bounds] if driver.bounds else []
        span_pids = pids.get(dated, _NO_ROWS).pids if dated else ()
        for term, value in _hi_terms(bounds, span_pids):
            sql += f" AND {term}"
            args.extend(value)
        return sql, args

    def _order(self, pids: Mapping[str, _Rows], with_hi: bool) -> None:
        terms, args = [], []
        for name, descending in self.sort:
            if name == "_id":
                expr = "r.id"
            elif name == "_lastUpdated":
                expr = "r.updated"
            elif descending and with_hi and name == self.primary_date:
                expr = "d.hi"
            else:
                # Ascending sorts by when a value starts, descending by when it ends. The `+ 0`
                # keeps SQLite's min/max shortcut from walking a whole (pid, lo|hi) index instead
                # of this resource's few rows.
                rows = pids.get(name, _NO_ROWS)
                bound = "MAX(s.hi + 0)" if descending else "MIN(s.lo + 0)"
                expr = f"(SELECT {bound} FROM dt s WHERE s.rid = r.rid AND s.pid IN ({_marks(len(rows.pids))}))"
                args.extend(rows.pids)
            terms.append(f"{expr} {'DESC' if descending else 'ASC'} NULLS LAST")
        self.order = ", ".join([*terms, "r.rid"])
        self.order_args = args


def _clause(resource_type: str, name: str, modifier: str, value: str, param: SearchParam, rows: _Rows) -> _Clause:
    table = {"reference": "ref", "date": "dt"}.get(param.kind, "tok")
    own = f"x.pid IN ({_marks(len(rows.pids))})" + (" AND x.target_type = ?" if rows.target_type else "")
    own_args: list[Any] = [*rows.pids, *([rows.target_type] if rows.target_type else [])]
    if modifier == "missing":
        if value not in ("true", "false"):
            raise InvalidSearch(f"{name}:missing takes true or false, not {value!r}")
        if name in COLUMN_PARAMS:  # every resource has an id and a lastUpdated
            return _Clause(name, 9, "0" if value == "true" else "1", [])
        exists = f"EXISTS (SELECT 1 FROM {table} x WHERE x.rid = r.rid AND {own})"
        return _Clause(name, 9, f"NOT {exists}" if value == "true" else exists, own_args)
    if name == "_id":
        _no_modifier(resource_type, name, modifier)
        ids = [_unescape(v) for v in _split(value, ",")]
        marks = _marks(len(ids))
        return _Clause(name, 0, f"r.id IN ({marks})", ids, "resources",
                       f"x.type = ? AND x.id IN ({marks})", [resource_type, *ids])
    if name == "_lastUpdated":
        _no_modifier(resource_type, name, modifier)
        # lastUpdated is read as the instant it names (its sub-millisecond range does not matter for
        # searches at millisecond precision), which lets the (type, updated) index serve ranges.
        cond, args, _ = _date_condition(name, value, "x.updated", "x.updated")
        return _Clause(name, 4, cond.replace("x.", "r."), args, "resources", f"x.type = ? AND ({cond})",
                       [resource_type, *args])
    bounds = None
    if param.kind == "date":
        _no_modifier(resource_type, name, modifier)
        cond, args, bounds = _date_condition(name, value, "x.lo", "x.hi")
        rank = 4
    elif param.kind == "reference":
        cond, args = _reference_condition(resource_type, name, modifier, value)
        rank = 1
    elif param.kind == "uri":
        _no_modifier(resource_type, name, modifier)
        values = [_unescape(v) for v in _split(value, ",")]
        cond, args = f"x.code IN ({_marks(len(values))})", values
        rank = 1
    else:
        if modifier not in ("", "not"):
            raise InvalidSearch(f"modifier ':{modifier}' is not supported on token parameter '{name}' "
                                f"of {resource_type} (supported: :not, :missing)")
        cond, args = _token_condition(value)
        rank = 5 if name in LOW_SELECTIVITY else 1 if name == "identifier" else 2
    # As a filter, the condition must probe this resource's own rows through the primary key
    # (rid, pid, ...). Unary + on the value columns stops SQLite from preferring a value index
    # and scanning every row with that value (or in that date range) instead.
    probe = re.sub(r"\bx\.", "+x.", cond)
    exists = f"EXISTS (SELECT 1 FROM {table} x WHERE x.rid = r.rid AND {own} AND ({probe}))"
    if modifier == "not":
        return _Clause(name, 9, f"NOT {exists}", [*own_args, *args])
    return _Clause(name, rank, exists, [*own_args, *args], table, f"{own} AND ({cond})", [*own_args, *args],
                   bounds)


def _hi_terms(bounds: list[_Bounds], span_pids: Sequence[int]) -> list[tuple[str, list[Any]]]:
    """Conditions on `x.hi` implied by AND-ed date clauses, for a driver reading an index on hi."""
    hi_min = max((b.hi_min for b in bounds if b.hi_min is not None), default=None)
    hi_max = min((b.hi_max for b in bounds if b.hi_max is not None), default=None)
    lo_max = min((b.lo_max for b in bounds if b.lo_max is not None), default=None)
    terms: list[tuple[str, list[Any]]] = []
    if hi_min is not None:
        terms.append(("x.hi >= ?", [hi_min]))
    if hi_max is not None:
        terms.append(("x.hi <= ?", [hi_max]))
    if lo_max is not None and span_pids:
        widest = f"(SELECT COALESCE(MAX(span), 0) FROM spans WHERE pid IN ({_marks(len(span_pids))}))"
        terms.append((f"x.hi <= ? + {widest}", [lo_max, *span_pids]))
    return terms


def _token_condition(value: str) -> tuple[str, list[Any]]:
    codes: list[str] = []
    terms: list[str] = []
    args: list[Any] = []
    for item in _split(value, ","):
        parts = _split(item, "|", 1)
        if len(parts) == 1:
            codes.append(_unescape(item))
            continue
        system, code = _unescape(parts[0]), _unescape(parts[1])
        if system and code:
            terms.append("(x.code = ? AND x.system = ?)")
            args += [code, system]
        elif code:
            terms.append("(x.code = ? AND x.system = '')")
            args.append(code)
        elif system:
            terms.append("x.system = ?")
            args.append(system)
        else:
            raise InvalidSearch(f"token value {item!r} has neither a system nor a code")
    if codes:
        terms.insert(0, f"x.code IN ({_marks(len(codes))})")
        args = [*codes, *args]
    return " OR ".join(terms), args


def _reference_condition(resource_type: str, name: str, modifier: str, value: str) -> tuple[str, list[Any]]:
    if modifier and not re.fullmatch(r"[A-Z][A-Za-z]+", modifier):
        raise InvalidSearch(f"modifier ':{modifier}' is not supported on reference parameter '{name}' "
                            f"of {resource_type} (supported: :[type], :missing)")
    terms, args = [], []
    for item in _split(value, ","):
        target = parse_reference(_unescape(item))
        if target is None:
            raise InvalidSearch(f"{name}={item!r} is not a reference (use Type/id or id)")
        kind, id = target
        if modifier and kind and kind != modifier:
            raise InvalidSearch(f"{name}:{modifier}={item} names another resource type")
        kind = kind or modifier
        if kind:
            terms.append("(x.target_id = ? AND x.target_type = ?)")
            args += [id, kind]
        else:
            terms.append("x.target_id = ?")
            args.append(id)
    return " OR ".join(terms), args


def _date_condition(name: str, value: str, lo: str, hi: str) -> tuple[str, list[Any], _Bounds]:
    """FHIR date search range semantics (R4 search §3.1.1.4.1): the target's [lo, hi] range against
    the search value's range [slo, shi], plus the bounds every match satisfies. The leading
    `hi >= ?` / `lo <= ?` of ge/le are implied by the rest; they are spelled out so that an index
    on hi or lo can serve the search."""
    terms: list[str] = []
    args: list[Any] = []
    bounds: list[_Bounds] = []
    for item in _split(value, ","):
        prefix, text = ("eq", item)
        if item[:2].isalpha():
            prefix, text = item[:2], item[2:]
            if prefix not in _DATE_PREFIXES:
                raise InvalidSearch(f"{name}: unsupported date prefix '{prefix}' in {item!r} "
                                    f"(supported: {', '.join(sorted(_DATE_PREFIXES))})")
        # An unencoded '+' of a UTC offset arrives as a space after form decoding.
        text = re.sub(r"(T[\d:.]+) (\d{2}:\d{2})$", r"\1+\2", text)
        try:
            slo, shi = parse_date_range(text)
        except ValueError as exc:
            raise InvalidSearch(f"search parameter '{name}': {exc}") from None
        contained = f"({lo} >= ? AND {hi} <= ?)"
        term, term_args, bound = {
            "eq": (contained, [slo, shi], _Bounds(slo, shi, shi)),
            "ne": (f"NOT {contained}", [slo, shi], _Bounds(None, None, None)),
            "gt": (f"{hi} > ?", [shi], _Bounds(shi + 1, None, None)),
            "lt": (f"{lo} < ?", [slo], _Bounds(None, None, slo - 1)),
            "ge": (f"({hi} >= ? AND ({hi} > ? OR {contained}))", [slo, shi, slo, shi], _Bounds(slo, None, None)),
            "le": (f"({lo} <= ? AND ({lo} < ? OR {contained}))", [shi, slo, slo, shi], _Bounds(None, None, shi)),
            "sa": (f"{lo} > ?", [shi], _Bounds(shi + 1, None, None)),
            "eb": (f"{hi} < ?", [slo], _Bounds(None, slo - 1, slo - 1)),
        }[prefix]
        terms.append(term)
        args += term_args
        bounds.append(bound)
    # OR of values: a bound holds only if every value has one, and then the loosest one.
    either = _Bounds(*(None if None in column else (min if i == 0 else max)(column)
                       for i, column in enumerate(zip(*bounds, strict=True))))
    return " OR ".join(terms), args, either


def _unknown_param(resource_type: str, name: str, known: Mapping[str, SearchParam]) -> str:
    supported = ", ".join(sorted([*known, *_CONTROL]))
    if "." in name:
        return f"chained search '{name}' is not supported on {resource_type}; supported parameters: {supported}"
    return f"unknown search parameter '{name}' for {resource_type}; supported parameters: {supported}"


def _no_modifier(resource_type: str, name: str, modifier: str) -> None:
    if modifier:
        raise InvalidSearch(f"modifier ':{modifier}' is not supported on '{name}' of {resource_type} "
                            "(supported: :missing)")


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidSearch(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _split(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on `sep` unless escaped with a backslash (FHIR search escaping)."""
    parts, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if char == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text) if "\\" in text else text


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _pairs(params: SearchParams | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        values = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
        if not isinstance(values, Sequence) or not all(isinstance(v, str | int) for v in values):
            raise InvalidSearch(f"search parameter '{key}' must be a string or a list of strings")
        pairs.extend((str(key), str(v)) for v in values)
    return pairs


def _criteria(query: str, what: str) -> list[tuple[str, str]]:
    """Search criteria of a conditional interaction (`identifier=...`; a `Type?` prefix is tolerated)."""
    pairs = parse_qsl(query.split("?", 1)[-1], keep_blank_values=True)
    if not pairs:
        raise InvalidSearch(f"{what} has no search parameters: {query!r}")
    return pairs


def _next_params(pairs: list[tuple[str, str]], offset: int) -> dict[str, Any]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key != "_offset":
            grouped.setdefault(key, []).append(value)
    result: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}
    result["_offset"] = str(offset)
    return result


# ---------------------------------------------------------------- resources and bundles


def _check_type(resource_type: Any, error: type[FhirError]) -> str:
    if not isinstance(resource_type, str) or not _TYPE.fullmatch(resource_type):
        raise error(f"{resource_type!r} is not a FHIR resource type name")
    return resource_type


def _check_resource(resource: Any, *, need_id: bool) -> str:
    if not isinstance(resource, dict):
        raise InvalidResource(f"a resource must be a JSON object, not {type(resource).__name__}")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not _TYPE.fullmatch(resource_type):
        raise InvalidResource(f"resourceType is missing or invalid: {resource_type!r}")
    id = resource.get("id")
    if need_id and id is None:
        raise InvalidResource(f"{resource_type}: an update needs the resource id")
    if id is not None and (not isinstance(id, str) or not _ID.fullmatch(id)):
        raise InvalidResource(f"{resource_type}: id {id!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)")
    if not isinstance(resource.get("meta", {}), dict):
        raise InvalidResource(f"{resource_type}: meta must be an object")
    return resource_type


def _same_content(old: Resource, new: Resource) -> bool:
    """FHIR's no-op update test: equal apart from meta (versionId, lastUpdated and the rest)."""
    if len(old) - ("meta" in old) != len(new) - ("meta" in new):
        return False
    return all(key == "meta" or old.get(key, _MISSING) == value for key, value in new.items())


_MISSING = object()


def _next_version(current: _Current, resource_type: str, id: str) -> int:
    if current.version >= _MAX_VERSION:
        raise ServerError(f"{resource_type}/{id} has reached the embedded store's version limit")
    return current.version + 1


def _etag_version(etag: str) -> str:
    """`W/"3"`, `"3"` and `3` all name version 3."""
    return str(etag).strip().removeprefix("W/").strip('"')


def _status_text(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _write_response(result: WriteResult) -> dict[str, Any]:
    status = {"created": 201, "updated": 200, "unchanged": 200, "exists": 200}.get(result.outcome, 204)
    response: dict[str, Any] = {"status": _status_text(status)}
    entry: dict[str, Any] = {"response": response}
    if result.version_id:
        response["etag"] = f'W/"{result.version_id}"'
    if result.resource is not None:
        response["location"] = f"{result.resource_type}/{result.id}/_history/{result.version_id}"
        response["lastModified"] = result.resource["meta"]["lastUpdated"]
        entry["fullUrl"] = f"{result.resource_type}/{result.id}"
        entry["resource"] = result.resource
    return entry


def _error_response(exc: FhirError) -> dict[str, Any]:
    return {"response": {"status": _status_text(exc.status), "outcome": exc.outcome}}


def _guard(e: _Entry, action: Any) -> Any:
    """Run one transaction entry; a failure names the entry and keeps its error type and status."""
    try:
        return action()
    except FhirError as exc:
        raise type(exc)(f"transaction entry {e.index} ({e.method} {e.url}) failed: {exc}", status=exc.status) from exc


def _resolve_references(node: Any, local_ids: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: local_ids.get(v, v) if k == "reference" and isinstance(v, str)
                else _resolve_references(v, local_ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_references(v, local_ids) for v in node]
    return node


def _bundle_kind(bundle: Any) -> str:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource("expected a Bundle resource")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidResource(f"Bundle.type must be transaction or batch, not {kind!r}")
    if not isinstance(bundle.get("entry", []), list):
        raise InvalidResource("Bundle.entry must be a list")
    return kind


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource_type: str
    id: str | None = None
    history: str | None = None  # "all" for _history, a version id for vread
    criteria: list[tuple[str, str]] | None = None
    resource: Resource = field(default_factory=dict)
    full_url: str | None = None
    if_match: str | None = None
    existing: tuple[int, str, int] | None = None


def _parse_entry(index: int, entry: Any) -> _Entry | FhirError:
    """A Bundle entry's request as an `_Entry`, or the InvalidResource saying what is wrong with it."""
    where = f"Bundle.entry[{index}]"
    try:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            raise InvalidResource(f"{where}.request is missing")
        method, url = request.get("method"), request.get("url")
        if method not in ("GET", "POST", "PUT", "DELETE"):
            raise InvalidResource(f"{where}.request.method must be GET, POST, PUT or DELETE, not {method!r}")
        if not isinstance(url, str) or not url.strip("/"):
            raise InvalidResource(f"{where}.request.url is missing")
        path, _, query = url.strip("/").partition("?")
        segments = path.split("/")
        resource_type = _check_type(segments[0], InvalidResource)
        e = _Entry(index, method, url, resource_type, full_url=entry.get("fullUrl"))
        _read_target(e, where, segments, query, request)
        if method in ("POST", "PUT"):
            if entry.get("resource") is None:
                raise InvalidResource(f"{where}.resource is missing")
            e.resource = entry["resource"]
            if _check_resource(e.resource, need_id=False) != resource_type:
                raise InvalidResource(f"{where}.resource is a {e.resource['resourceType']}, the url says {resource_type}")
            if e.id is not None and e.resource.get("id") not in (None, e.id):
                raise InvalidResource(f"{where}.resource.id {e.resource['id']!r} differs from the url id {e.id!r}")
        return e
    except FhirError as exc:
        return exc


def _read_target(e: _Entry, where: str, segments: list[str], query: str, request: dict[str, Any]) -> None:
    shape = f"{e.method} {e.url}"
    if e.method == "POST":
        if len(segments) != 1 or query:
            raise InvalidResource(f"{where}: POST url must be a resource type, not {e.url!r}")
        if request.get("ifNoneExist"):
            e.criteria = _criteria(request["ifNoneExist"], f"{where}.request.ifNoneExist")
        return
    if len(segments) == 1:
        if e.method != "GET" and not query:
            raise InvalidResource(f"{where}: {shape} needs an id or search criteria")
        e.criteria = parse_qsl(query, keep_blank_values=True) if e.method == "GET" else _criteria(query, where)
    elif len(segments) == 2 or (e.method == "GET" and len(segments) in (3, 4) and segments[2] == "_history"):
        e.id = segments[1]
        e.history = ("all" if len(segments) == 3 else segments[3]) if len(segments) > 2 else None
    else:
        raise InvalidResource(f"{where}: unsupported request {shape}")
    if request.get("ifMatch"):
        e.if_match = _etag_version(request["ifMatch"])
