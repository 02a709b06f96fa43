"""Transaction and batch Bundles (FHIR R4 http.html#transaction) on the embedded store.

`parse_entry` checks one entry's request; `transaction_in` applies a transaction's entries inside
one store transaction in FHIR's processing order; `apply_write` / `apply_get` serve one entry (a
batch runs each entry in its own transaction, `SqliteFhirStore.transaction`).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fhirstore.errors import FhirError, InvalidResource
from fhirstore.port import Resource, WriteResult
from fhirstore.sqlite import versions
from fhirstore.sqlite.query import SearchCache, conditional_criteria, run
from fhirstore.sqlite.versions import Tx, check_resource, check_type, etag_version, status_text

_T = TypeVar("_T")


@dataclass
class Entry:
    """One Bundle entry's request; `id` and `existing` are filled in as a transaction decides them."""

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
    existing: tuple[int, str, int] | None = None  # (rid, id, version) a conditional create found


def bundle_kind(bundle: Any) -> str:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource("expected a Bundle resource")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidResource(f"Bundle.type must be transaction or batch, not {kind!r}")
    if not isinstance(bundle.get("entry", []), list):
        raise InvalidResource("Bundle.entry must be a list")
    return str(kind)


def transaction_in(tx: Tx, entries: list[Entry], searches: SearchCache) -> list[dict[str, Any]]:
    """FHIR's processing order: deletes, then creates, then updates, then reads; `urn:uuid:`
    fullUrls of created/updated entries are replaced by their ids in every reference."""
    responses: list[dict[str, Any]] = [{} for _ in entries]
    by_method = {m: [e for e in entries if e.method == m] for m in ("DELETE", "POST", "PUT", "GET")}
    for e in by_method["DELETE"]:
        responses[e.index] = _guard(e, partial(apply_write, tx, e, searches))
    local_ids: dict[str, str] = {}
    for e in by_method["POST"] + by_method["PUT"]:
        _guard(e, partial(assign_id, tx, e, searches))
        if e.full_url and e.full_url.startswith(("urn:uuid:", "urn:oid:")):
            local_ids[e.full_url] = f"{e.resource_type}/{e.id}"
    for e in by_method["POST"] + by_method["PUT"]:
        if local_ids:
            e.resource = _resolve_references(e.resource, local_ids)
        responses[e.index] = _guard(e, partial(apply_write, tx, e, searches))
    for e in by_method["GET"]:
        responses[e.index] = _guard(e, partial(apply_get, tx.db, e, searches))
    return responses


def assign_id(tx: Tx, e: Entry, searches: SearchCache) -> None:
    """Decide the id a POST or conditional PUT will write, before any of them writes."""
    if e.method == "POST":
        found = None
        if e.criteria is not None:
            found = searches.match(tx.db, e.resource_type, e.criteria, f"conditional create of {e.resource_type}")
        e.existing = found
        e.id = found[1] if found else str(uuid.uuid4())
    elif e.criteria is not None:
        found = searches.match(tx.db, e.resource_type, e.criteria, f"conditional update of {e.resource_type}")
        body_id = e.resource.get("id")
        if found and body_id not in (None, found[1]):
            raise InvalidResource(f"conditional update matched {e.resource_type}/{found[1]} "
                                  f"but the resource has id {body_id!r}")
        e.id = found[1] if found else body_id or str(uuid.uuid4())


def apply_write(tx: Tx, e: Entry, searches: SearchCache) -> dict[str, Any]:
    if e.method == "POST":
        if e.existing is not None:
            return _write_response(versions.existing(tx.db, e.resource_type, e.existing))
        return _write_response(versions.insert(tx, e.resource_type, _decided(e), e.resource, "POST"))
    if e.method == "PUT":
        resource = {**e.resource, "id": e.id}
        return _write_response(versions.update(tx, e.resource_type, _decided(e), resource, e.if_match))
    if e.criteria is not None:
        found = searches.match(tx.db, e.resource_type, e.criteria, f"conditional delete of {e.resource_type}")
        if found is None:
            return {"response": {"status": status_text(204)}}
        e.id = found[1]
    return _write_response(versions.delete(tx, e.resource_type, _decided(e)))


def apply_get(db: sqlite3.Connection, e: Entry, searches: SearchCache) -> dict[str, Any]:
    if e.id is None:
        criteria = e.criteria or []
        result = run(db, searches.compile(e.resource_type, criteria), criteria)
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": result.total,
                  "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                            for r in result.resources]}
        return {"resource": bundle, "response": {"status": status_text(200)}}
    if e.history == "all":
        return {"resource": versions.history(db, e.resource_type, e.id), "response": {"status": status_text(200)}}
    if e.history:
        found = versions.vread(db, e.resource_type, e.id, e.history)
    else:
        found = versions.read(db, e.resource_type, e.id)
    meta = found.get("meta", {})
    return {"resource": found, "response": {"status": status_text(200), "etag": f'W/"{meta.get("versionId")}"',
                                            "lastModified": meta.get("lastUpdated")}}


def _decided(e: Entry) -> str:
    """The id a write entry targets (its url's, or the one `assign_id` decided)."""
    if e.id is None:
        raise InvalidResource(f"transaction entry {e.index} ({e.method} {e.url}) names no resource id")
    return e.id


def _write_response(result: WriteResult) -> dict[str, Any]:
    status = {"created": 201, "updated": 200, "unchanged": 200, "exists": 200}.get(result.outcome, 204)
    response: dict[str, Any] = {"status": status_text(status)}
    entry: dict[str, Any] = {"response": response}
    if result.version_id:
        response["etag"] = f'W/"{result.version_id}"'
    if result.resource is not None:
        response["location"] = f"{result.resource_type}/{result.id}/_history/{result.version_id}"
        response["lastModified"] = result.resource["meta"]["lastUpdated"]
        entry["fullUrl"] = f"{result.resource_type}/{result.id}"
        entry["resource"] = result.resource
    return entry


def error_response(exc: FhirError) -> dict[str, Any]:
    return {"response": {"status": status_text(exc.status), "outcome": exc.outcome}}


def _guard(e: Entry, action: Callable[[], _T]) -> _T:
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


def parse_entry(index: int, entry: Any) -> Entry | FhirError:
    """A Bundle entry's request as an `Entry`, or the InvalidResource saying what is wrong with it."""
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
        resource_type = check_type(segments[0], InvalidResource)
        e = Entry(index, method, url, resource_type, full_url=entry.get("fullUrl"))
        _read_target(e, where, segments, query, request)
        if method in ("POST", "PUT"):
            if entry.get("resource") is None:
                raise InvalidResource(f"{where}.resource is missing")
            e.resource = entry["resource"]
            if check_resource(e.resource, need_id=False) != resource_type:
                raise InvalidResource(f"{where}.resource is a {e.resource['resourceType']}, "
                                      f"the url says {resource_type}")
            if e.id is not None and e.resource.get("id") not in (None, e.id):
                raise InvalidResource(f"{where}.resource.id {e.resource['id']!r} differs from the url id {e.id!r}")
        return e
    except FhirError as exc:
        return exc


def _read_target(e: Entry, where: str, segments: list[str], query: str, request: dict[str, Any]) -> None:
    shape = f"{e.method} {e.url}"
    if e.method == "POST":
        if len(segments) != 1 or query:
            raise InvalidResource(f"{where}: POST url must be a resource type, not {e.url!r}")
        if request.get("ifNoneExist"):
            e.criteria = conditional_criteria(request["ifNoneExist"], f"{where}.request.ifNoneExist")
        return
    if len(segments) == 1:
        if e.method != "GET" and not query:
            raise InvalidResource(f"{where}: {shape} needs an id or search criteria")
        if e.method == "GET":
            e.criteria = parse_qsl(query, keep_blank_values=True)
        else:
            e.criteria = conditional_criteria(query, where)
    elif len(segments) == 2 or (e.method == "GET" and len(segments) in (3, 4) and segments[2] == "_history"):
        e.id = segments[1]
        e.history = ("all" if len(segments) == 3 else segments[3]) if len(segments) > 2 else None
    else:
        raise InvalidResource(f"{where}: unsupported request {shape}")
    if request.get("ifMatch"):
        e.if_match = etag_version(request["ifMatch"])
