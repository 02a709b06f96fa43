"""Resource versions: reading them, and writing one inside a store transaction.

A write inserts the new version's JSON, replaces the resource's index rows (`tok`/`ref`/`dt`, and
the readings index for an Observation) and records its event (`outbox.emit`), all in the caller's
transaction (`Tx`), so an event exists exactly when its version does.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NamedTuple

from common import jsonnum  # decimals as written: 22.40 stays 22.40
from fhirstore import readings_index
from fhirstore.errors import FhirError, InvalidResource, PreconditionFailed, ResourceGone, ResourceNotFound, ServerError
from fhirstore.index_rows import MIN_TIME, IndexRows, extractor_for
from fhirstore.port import Resource, WriteResult
from fhirstore.search_params import params_for
from fhirstore.sqlite import outbox
from fhirstore.sqlite.catalog import ParamCatalog
from fhirstore.sqlite.schema import MAX_VERSION, vkey

_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_MISSING = object()


@dataclass
class Tx:
    """One write transaction: its connection, its time, and what it changed beyond the rows."""

    db: sqlite3.Connection
    iso: str
    updated: int  # lastUpdated in microseconds, truncated to the millisecond `iso` shows
    catalog: ParamCatalog
    spans: dict[int, int] = field(default_factory=dict)  # widest date ranges written, per parameter id
    types: set[str] = field(default_factory=set)  # resource types written (their change counters move)


class Current(NamedTuple):
    rid: int
    version: int
    deleted: bool


# ---------------------------------------------------------------- reads


def _loads(body: str) -> Resource:
    doc: Resource = jsonnum.loads(body)  # the store writes only JSON objects
    return doc


def read(db: sqlite3.Connection, resource_type: str, id: str) -> Resource:
    row = db.execute(
        "SELECT v.body FROM resources r JOIN versions v ON v.vkey = (r.rid << 20) + r.version"
        " WHERE r.type = ? AND r.id = ?", (resource_type, id)).fetchone()
    if row is None:
        raise ResourceNotFound(f"{resource_type}/{id} not found")
    if row[0] is None:
        raise ResourceGone(f"{resource_type}/{id} was deleted")
    return _loads(row[0])


def vread(db: sqlite3.Connection, resource_type: str, id: str, version_id: str) -> Resource:
    version = int(version_id) if str(version_id).isdigit() else 0
    row = None
    if 0 < version <= MAX_VERSION:
        row = db.execute(
            "SELECT v.body FROM resources r JOIN versions v ON v.vkey = (r.rid << 20) + ?"
            " WHERE r.type = ? AND r.id = ?", (version, resource_type, id)).fetchone()
    if row is None:
        raise ResourceNotFound(f"{resource_type}/{id}/_history/{version_id} not found")
    if row[0] is None:
        raise ResourceGone(f"{resource_type}/{id}/_history/{version_id} is a deletion")
    return _loads(row[0])


def history(db: sqlite3.Connection, resource_type: str, id: str) -> Resource:
    rows = db.execute(
        "SELECT v.vkey, v.method, v.at, v.body FROM resources r JOIN versions v"
        " ON v.vkey BETWEEN (r.rid << 20) AND (r.rid << 20) + 1048575"
        " WHERE r.type = ? AND r.id = ? ORDER BY v.vkey DESC", (resource_type, id)).fetchall()
    if not rows:
        raise ResourceNotFound(f"{resource_type}/{id} not found")
    entries = []
    for key, method, at, body in rows:
        version = key & MAX_VERSION
        status = 204 if method == "DELETE" else 201 if version == 1 or method == "POST" else 200
        url = resource_type if method == "POST" else f"{resource_type}/{id}"
        entry: dict[str, Any] = {
            "fullUrl": f"{resource_type}/{id}",
            "request": {"method": method, "url": url},
            "response": {"status": status_text(status), "etag": f'W/"{version}"', "lastModified": at},
        }
        if body is not None:
            entry["resource"] = jsonnum.loads(body)
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}


def existing(db: sqlite3.Connection, resource_type: str, found: tuple[int, str, int]) -> WriteResult:
    """The outcome of a conditional create that found (rid, id, version)."""
    rid, id, version = found
    body = db.execute("SELECT body FROM versions WHERE vkey = ?", (vkey(rid, version),)).fetchone()
    return WriteResult("exists", jsonnum.loads(body[0]), resource_type, id, str(version))


def _lookup(db: sqlite3.Connection, resource_type: str, id: str) -> Current | None:
    row = db.execute("SELECT rid, version, deleted FROM resources WHERE type = ? AND id = ?",
                     (resource_type, id)).fetchone()
    return Current(row[0], row[1], bool(row[2])) if row else None


def _body(db: sqlite3.Connection, rid: int, version: int) -> Resource:
    row = db.execute("SELECT body FROM versions WHERE vkey = ?", (vkey(rid, version),)).fetchone()
    return _loads(row[0])


# ---------------------------------------------------------------- writes


def insert(tx: Tx, resource_type: str, id: str, resource: Resource, method: str) -> WriteResult:
    doc = _put_version(tx, resource_type, id, resource, method, None)
    return WriteResult("created", doc, resource_type, id, "1")


def update(tx: Tx, resource_type: str, id: str, resource: Resource, expected: str | None) -> WriteResult:
    current = _lookup(tx.db, resource_type, id)
    live = current if current is not None and not current.deleted else None
    if expected is not None and (live is None or str(live.version) != expected):
        have = f"the current version is {live.version}" if live else "it does not exist"
        raise PreconditionFailed(f"{resource_type}/{id}: If-Match expects version {expected} but {have}")
    if live is not None:
        old = _body(tx.db, live.rid, live.version)
        if _same_content(old, resource):
            return WriteResult("unchanged", old, resource_type, id, str(live.version))
    doc = _put_version(tx, resource_type, id, resource, "PUT", current)
    return WriteResult("updated" if live else "created", doc, resource_type, id, doc["meta"]["versionId"])


def delete(tx: Tx, resource_type: str, id: str) -> WriteResult:
    current = _lookup(tx.db, resource_type, id)
    if current is None or current.deleted:
        return WriteResult("gone", None, resource_type, id, str(current.version) if current else None)
    version = _next_version(current, resource_type, id)
    tx.types.add(resource_type)
    db = tx.db
    db.execute("UPDATE resources SET version = ?, deleted = 1, updated = ? WHERE rid = ?",
               (version, tx.updated, current.rid))
    db.execute("INSERT INTO versions (vkey, method, at, body) VALUES (?, 'DELETE', ?, NULL)",
               (vkey(current.rid, version), tx.iso))
    _drop_index(db, current.rid)
    if resource_type == "Observation":
        readings_index.drop(db, current.rid)
    outbox.emit(db, "deleted", vkey(current.rid, version))
    return WriteResult("deleted", None, resource_type, id, str(version))


def _put_version(tx: Tx, resource_type: str, id: str, resource: Resource, method: str,
                 current: Current | None) -> Resource:
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
    primary = tx.catalog.primary_rows.get(resource_type, ())
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
        assert rid is not None  # an INSERT into a rowid table always sets it
    else:
        rid = current.rid
        db.execute("UPDATE resources SET version = ?, deleted = 0, updated = ? WHERE rid = ?",
                   (version, tx.updated, rid))
        if not current.deleted:
            _drop_index(db, rid)
            if resource_type == "Observation":
                readings_index.drop(db, rid)
    db.execute("INSERT INTO versions (vkey, method, at, body) VALUES (?, ?, ?, ?)",
               (vkey(rid, version), method, tx.iso, body))
    _index(tx, resource_type, rid, rows)
    if resource_type == "Observation":
        readings_index.write(db, doc, rows, rid, version)
    outbox.emit(db, "created" if current is None or current.deleted else "updated", vkey(rid, version))
    return doc


def _index(tx: Tx, resource_type: str, rid: int, rows: IndexRows) -> None:
    db, pids = tx.db, tx.catalog.type_pids[resource_type]
    if rows.tokens:
        db.executemany("INSERT INTO tok (rid, pid, code, system) VALUES (?, ?, ?, ?)",
                       [(rid, pids[p], code, system) for p, code, system in rows.tokens])
    if rows.refs:
        dated = tx.catalog.primary_rows.get(resource_type, ())
        hi = max((high for p, _, high in rows.dates if p in dated), default=MIN_TIME)
        db.executemany("INSERT INTO ref (rid, pid, target_id, target_type, hi) VALUES (?, ?, ?, ?, ?)",
                       [(rid, pids[p], target, kind, hi) for p, target, kind in rows.refs])
    if rows.dates:
        dates = [(rid, pids[p], lo, hi) for p, lo, hi in rows.dates]
        db.executemany("INSERT INTO dt (rid, pid, lo, hi) VALUES (?, ?, ?, ?)", dates)
        _widen_spans(tx, dates)


def _widen_spans(tx: Tx, dates: list[tuple[int, int, int, int]]) -> None:
    """Keep the widest date range per parameter. A search for values starting before B then
    knows their ends lie before B + widest, which bounds the index range it reads."""
    committed = tx.catalog.spans
    for _, pid, lo, hi in dates:
        if hi - lo > max(committed.get(pid, -1), tx.spans.get(pid, -1)):
            tx.spans[pid] = hi - lo
            tx.db.execute("INSERT INTO spans (pid, span) VALUES (?, ?) ON CONFLICT (pid) DO UPDATE"
                          " SET span = excluded.span WHERE excluded.span > span", (pid, hi - lo))


def _drop_index(db: sqlite3.Connection, rid: int) -> None:
    db.execute("DELETE FROM tok WHERE rid = ?", (rid,))
    db.execute("DELETE FROM ref WHERE rid = ?", (rid,))
    db.execute("DELETE FROM dt WHERE rid = ?", (rid,))


# ---------------------------------------------------------------- checks


def check_type(resource_type: Any, error: type[FhirError]) -> str:
    if not isinstance(resource_type, str) or not _TYPE.fullmatch(resource_type):
        raise error(f"{resource_type!r} is not a FHIR resource type name")
    return resource_type


def check_resource(resource: Any, *, need_id: bool) -> str:
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


def _next_version(current: Current, resource_type: str, id: str) -> int:
    if current.version >= MAX_VERSION:
        raise ServerError(f"{resource_type}/{id} has reached the embedded store's version limit")
    return current.version + 1


def etag_version(etag: str) -> str:
    """`W/"3"`, `"3"` and `3` all name version 3."""
    return str(etag).strip().removeprefix("W/").strip('"')


def status_text(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"
