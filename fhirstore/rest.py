"""The FHIR R4 RESTful API over a `FhirStore`, as one transport-free function.

`handle(...)` takes a request already split into method, path (relative to the FHIR base), query,
headers and body, and returns a `RestResponse`. Any HTTP server can mount it (the local runtime
server, the loopback test server); it does no authentication itself.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from common import jsonnum
from common.storage import StorageFault
from common.storage import describe as describe_storage_fault
from fhirstore.errors import FhirError, InvalidResource, operation_outcome
from fhirstore.json_body import parse_json_body
from fhirstore.port import FhirStore, Resource, WriteOutcome, WriteResult
from fhirstore.search_params import REGISTRY, params_for

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"
_JSON_TYPES = frozenset({"", "application/fhir+json", "application/json", "application/json+fhir"})
_FORM = "application/x-www-form-urlencoded"
# Result-format parameters a server may ignore; `_totalMethod` is what fhirpy's count() sends.
_IGNORED_PARAMS = frozenset({"_format", "_pretty", "_totalMethod"})
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
# The largest page a search answers (`_count` above it is served as this); the default page size
# is the store's (100 for the embedded store). Documented in README ("vigil serve").
MAX_PAGE_SIZE = 1000
# The date the capabilities below last changed (CapabilityStatement.date is that, not "now").
CAPABILITY_DATE = "2025-01-01"


@dataclass(frozen=True)
class RestResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return jsonnum.loads(self.body) if self.body else None


def handle(
    store: FhirStore,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    base_url: str,
) -> RestResponse:
    """Answer one FHIR REST request. Errors become their status with an OperationOutcome body."""
    request = _Request(store, method.upper(), [unquote(s) for s in path.strip("/").split("/") if s],
                       parse_qsl(query or "", keep_blank_values=True),
                       {k.lower(): v for k, v in headers.items()}, body or b"", base_url.rstrip("/"))
    try:
        return request.route()
    except FhirError as exc:
        fault = describe_storage_fault(exc) if exc.status >= 500 else None
        if fault is not None:
            return _storage_fault(fault)
        return _json(exc.status, exc.outcome)
    except Exception as exc:
        fault = describe_storage_fault(exc)
        if fault is not None:
            return _storage_fault(fault)
        # Type and place only: an exception's message may quote resource content (PHI).
        where = traceback.extract_tb(exc.__traceback__)[-1]
        logger.error("FHIR %s %s failed: %s at %s:%s", request.method, request.segments[:1],
                     type(exc).__name__, where.filename, where.lineno)
        return _problem(500, "exception", "internal error in the FHIR facade")


@dataclass
class _Request:
    store: FhirStore
    method: str
    segments: list[str]
    params: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    base: str

    def route(self) -> RestResponse:
        formats = [v for k, v in self.params if k == "_format"]
        if any(f.split(";")[0].strip() not in _JSON_FORMATS for f in formats):
            return _problem(406, "not-supported", "this server speaks JSON only (_format=json)")
        self.params = [(k, v) for k, v in self.params if k not in _IGNORED_PARAMS]
        seg, method = self.segments, self.method
        if not seg:
            return self.system() if method == "POST" else _not_allowed(method, "POST")
        if seg == ["metadata"]:
            return _json(200, capability_statement(self.base)) if method == "GET" else _not_allowed(method, "GET")
        if not seg[0][:1].isupper() or not seg[0].isalpha():
            return _problem(404, "not-found", f"unknown path '/{'/'.join(seg)}'")
        if len(seg) == 1:
            return self.type_level()
        if len(seg) == 2 and seg[1] == "_search":
            return (
                self.search(self.params + self._form()) if method in ("POST", "GET") else _not_allowed(method, "POST")
            )
        if len(seg) == 2:
            return self.instance()
        if len(seg) in (3, 4) and seg[2] == "_history":
            if method != "GET":
                return _not_allowed(method, "GET")
            if len(seg) == 3:
                return _json(200, self._absolute(self.store.history(seg[0], seg[1])))
            return self._resource(200, self.store.vread(seg[0], seg[1], seg[3]))
        return _problem(404, "not-found", f"unknown path '/{'/'.join(seg)}'")

    # ---------------------------------------------------------------- interactions

    def system(self) -> RestResponse:
        bundle = self._json_body("Bundle")
        return _json(200, self._absolute(self.store.transaction(bundle)))

    def type_level(self) -> RestResponse:
        rtype, method = self.segments[0], self.method
        if method == "GET":
            return self.search(self.params)
        if method == "POST":
            resource = self._json_body(rtype)
            # fhirpy's get_or_create() sends the criteria as the query string instead of If-None-Exist.
            criteria = self.headers.get("if-none-exist") or (urlencode(self.params) if self.params else None)
            result = self.store.create(resource, if_none_exist=criteria)
            return self._written(result)
        if method in ("PUT", "DELETE"):
            if not self.params:
                raise InvalidResource(f"{method} {rtype} needs an id in the path or search criteria")
            request: dict[str, Any] = {"method": method, "url": f"{rtype}?{urlencode(self.params)}"}
            entry: dict[str, Any] = {"request": request}
            if method == "PUT":
                entry["resource"] = self._json_body(rtype)
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
            return self._from_entry(self.store.transaction(bundle)["entry"][0])
        return _not_allowed(method, "GET, POST, PUT, DELETE")

    def instance(self) -> RestResponse:
        rtype, id = self.segments
        if self.method == "GET":
            resource = self.store.read(rtype, id)
            wanted = self.headers.get("if-none-match")
            if wanted and _version(wanted) == resource.get("meta", {}).get("versionId"):
                return RestResponse(304, _version_headers(resource))
            return self._resource(200, resource)
        if self.method == "PUT":
            resource = self._json_body(rtype)
            if resource.get("id") != id:
                raise InvalidResource(f"the resource id {resource.get('id')!r} must equal the id in the URL ({id!r})")
            return self._written(self.store.update(resource, if_match=self.headers.get("if-match")))
        if self.method == "DELETE":
            self.store.delete(rtype, id)
            return RestResponse(204)
        return _not_allowed(self.method, "GET, PUT, DELETE")

    def search(self, pairs: list[tuple[str, str]]) -> RestResponse:
        rtype = self.segments[0]
        # Pages hold at most MAX_PAGE_SIZE entries whatever `_count` asks; the rest follow by next
        # links. The links carry the size actually served (FHIR R4 search §3.1.1.6 lets a server
        # return fewer than asked).
        pairs = [(k, _page_size(v)) if k == "_count" else (k, v) for k, v in pairs]
        grouped: dict[str, list[str]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        result = self.store.search(rtype, grouped)
        links = [{"relation": "self", "url": f"{self.base}/{rtype}?{_encode(pairs)}"}]
        if result.next_params:
            links.append({"relation": "next", "url": f"{self.base}/{rtype}?{_encode(_flatten(result.next_params))}"})
        bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": result.total, "link": links}
        if result.resources:
            bundle["entry"] = [{"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r,
                                "search": {"mode": "match"}} for r in result.resources]
        return _json(200, bundle)

    # ---------------------------------------------------------------- helpers

    def _form(self) -> list[tuple[str, str]]:
        if not self.body:
            return []
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != _FORM:
            raise InvalidResource(f"POST _search takes {_FORM} parameters, not {content_type or 'no content type'}")
        try:
            return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise InvalidResource("the search form is not UTF-8") from None

    def _json_body(self, expected_type: str) -> Resource:
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _JSON_TYPES:
            raise FhirError(f"unsupported Content-Type {content_type!r}: send application/fhir+json", status=415)
        if not self.body.strip():
            raise InvalidResource(f"the request body is empty; expected a {expected_type} resource")
        resource = parse_json_body(self.body)
        if not isinstance(resource, dict):
            raise InvalidResource(f"the request body must be a JSON object (a {expected_type} resource)")
        if resource.get("resourceType") != expected_type:
            raise InvalidResource(f"the request body has resourceType {resource.get('resourceType')!r}; "
                                  f"this URL takes {expected_type}")
        return resource

    def _prefer(self) -> str:
        for part in self.headers.get("prefer", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == "return":
                return value.strip('"')
        return "representation"

    def _written(self, result: WriteResult) -> RestResponse:
        status = 201 if result.outcome == "created" else 200
        resource = result.resource or {}
        headers = _version_headers(resource)
        if status == 201:
            headers["Location"] = f"{self.base}/{result.resource_type}/{result.id}/_history/{result.version_id}"
        prefer = self._prefer()
        if prefer == "minimal":
            return RestResponse(status, headers)
        if prefer == "OperationOutcome":
            text = f"{result.resource_type}/{result.id} version {result.version_id}: {result.outcome}"
            return _json(status, operation_outcome("information", "informational", text), headers)
        return _json(status, resource, headers)

    def _from_entry(self, entry: Mapping[str, Any]) -> RestResponse:
        response = entry.get("response", {})
        status = int(str(response.get("status", "200")).split()[0])
        if status == 204 or "resource" not in entry:
            return RestResponse(status)
        resource = entry["resource"]
        meta = resource.get("meta", {})
        outcome: WriteOutcome = "created" if status == 201 else "updated"
        return self._written(WriteResult(outcome, resource, resource["resourceType"], resource["id"],
                                         meta.get("versionId")))

    def _resource(self, status: int, resource: Resource) -> RestResponse:
        return _json(status, resource, _version_headers(resource))

    def _absolute(self, bundle: Resource) -> Resource:
        for entry in bundle.get("entry", []):
            url = entry.get("fullUrl")
            if isinstance(url, str) and not url.startswith(("http:", "https:", "urn:")):
                entry["fullUrl"] = f"{self.base}/{url}"
        return bundle


def capability_statement(base_url: str) -> Resource:
    """What this server does, generated from the search parameter registry."""
    interactions = ["read", "vread", "update", "delete", "history-instance", "create", "search-type"]
    resources = []
    for rtype in sorted(REGISTRY):
        resources.append({
            "type": rtype,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchParam": [{"name": name, "type": param.kind} for name, param in sorted(params_for(rtype).items())],
        })
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "kind": "instance",
        "software": {"name": "Vigil embedded FHIR store"},
        "implementation": {"description": "Vigil embedded FHIR store (SQLite)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Other resource types can be stored and read; they search by _id, "
                             "_lastUpdated and identifier.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    }


def _version(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _version_headers(resource: Resource) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        try:
            when = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
            headers["Last-Modified"] = format_datetime(when, usegmt=True)
        except (ValueError, TypeError):
            pass  # a malformed lastUpdated only costs the header
    return headers


def _page_size(value: str) -> str:
    text = value.strip()
    if text.isdecimal() and text.isascii() and int(text) > MAX_PAGE_SIZE:
        return str(MAX_PAGE_SIZE)
    return value  # the store refuses what is not a count, with its own message


def _encode(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, safe=":|,/", quote_via=quote)


def _flatten(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        pairs.extend((key, v) for v in ([value] if isinstance(value, str) else value))
    return pairs


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> RestResponse:
    body = jsonnum.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return RestResponse(status, {**(headers or {}), "Content-Type": FHIR_JSON}, body)


def _storage_fault(fault: StorageFault) -> RestResponse:
    """The store's file could not be written or read (full disk, read-only, corrupt): 503 with
    Retry-After (RFC 9110 §15.6.4), the FHIR `transient` code, so a client retries the interaction
    later rather than giving it up as a server bug. The log names the file (common/storage.py)."""
    logger.error("FHIR store storage fault: %s", fault.line())
    response = _problem(503, "transient", f"storage unavailable: {fault.what}; try again later")
    response.headers["Retry-After"] = "60"
    return response


def _problem(status: int, code: str, text: str) -> RestResponse:
    return _json(status, operation_outcome("error", code, text))


def _not_allowed(method: str, allowed: str) -> RestResponse:
    response = _problem(405, "not-supported", f"{method} is not supported here (allowed: {allowed})")
    response.headers["Allow"] = allowed
    return response
