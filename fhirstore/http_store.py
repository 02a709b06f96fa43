"""`FhirStore` over HTTP for any FHIR R4 server (Azure Health Data Services, HAPI, Medplum).

Auth, retries and error mapping are `fhirstore.http_transport`'s; this module maps the port's
interactions onto FHIR R4 REST (read-compare-PUT updates, split transactions, paged history).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx
from azure.core.credentials import TokenCredential

from fhirstore.batch_reads import Answer, Read, batch_answers, batch_bundle
from fhirstore.errors import (
    FhirError,
    InvalidResource,
    InvalidSearch,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    ServerError,
)
from fhirstore.http_transport import HttpTransport, json_or_none
from fhirstore.http_wire import (
    check_splittable,
    checked_id,
    checked_type,
    etag_version,
    first_version,
    location_ids,
    meta_version,
    next_page_params,
    query_pairs,
    resource_path,
    with_etag,
    without_meta,
)
from fhirstore.port import Resource, SearchParams, SearchResult, WriteOutcome, WriteResult
from fhirstore.version_cache import DEFAULT_VERSIONS, VersionCache

_MAX_HISTORY_PAGES = 1000
# Entries per transaction POST. Medplum refuses transactions of more than 50 updates and Health Data
# Services bundles of more than 500 entries (docs/fhir-servers.md); 50 serves both.
DEFAULT_TRANSACTION_SIZE = 50


class HttpFhirStore(HttpTransport):
    """A `FhirStore` talking FHIR R4 REST. Not tied to one server: only standard interactions."""

    def __init__(
        self,
        base_url: str,
        *,
        credential: TokenCredential | None = None,
        scope: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_transaction_entries: int = DEFAULT_TRANSACTION_SIZE,
        version_cache: int = DEFAULT_VERSIONS,
    ) -> None:
        if max_transaction_entries < 1:
            raise ValueError(f"max_transaction_entries must be >= 1, got {max_transaction_entries}")
        super().__init__(base_url, credential=credential, scope=scope, timeout=timeout, max_retries=max_retries,
                         backoff_base=backoff_base, backoff_max=backoff_max, client=client, sleep=sleep)
        self.max_transaction_entries = max_transaction_entries
        self.versions = VersionCache(version_cache)

    def __enter__(self) -> HttpFhirStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- port -----------------------------------------------------------------------------------

    def read(self, resource_type: str, id: str) -> Resource:
        path = resource_path(resource_type, id)
        found = self._resource(self._request("GET", path, interaction="read"), "read", path)
        self.versions.remember(found)
        return found

    def vread(self, resource_type: str, id: str, version_id: str) -> Resource:
        """Answered from the versions this adapter wrote or read (fhirstore.version_cache) when it has it."""
        path = f"{resource_path(resource_type, id)}/_history/{checked_id(version_id, 'version id')}"
        known = self.versions.get(resource_type, id, version_id)
        if known is not None:
            return known
        found = self._resource(self._request("GET", path, interaction="vread"), "vread", path)
        self.versions.remember(found)
        return found

    def read_batch(self, reads: Sequence[Read]) -> list[Answer]:
        """Several reads in one `batch` Bundle of GET entries (fhirstore.batch_reads); reads only,
        so it is retried like any GET."""
        for r in reads:  # refused here, as read() and search() would: nothing odd goes into a URL
            resource_path(r.resource_type, r.id) if r.id is not None else checked_type(r.resource_type)
        response = self._bundle(self._request("POST", "", json_body=batch_bundle(reads), interaction="batch"),
                                "batch", "Bundle")
        return batch_answers(self, reads, response)

    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        resource_type = checked_type(resource.get("resourceType") if isinstance(resource, dict) else None)
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            query = if_none_exist.lstrip("?")
            if not query or "\n" in query or "\r" in query:
                raise InvalidSearch(f"create {resource_type}: if_none_exist must be a non-empty query string")
            headers["If-None-Exist"] = query
        # The port promises a server-assigned id; HAPI rejects a POST body that carries one.
        body = {k: v for k, v in resource.items() if k != "id"}
        response = self._request(
            "POST",
            resource_type,
            json_body=body,
            headers=headers,
            interaction="create",
            idempotent=if_none_exist is not None,
        )
        outcome: WriteOutcome = "exists" if response.status_code == 200 else "created"
        return self._write_result(outcome, response, resource_type, "create")

    def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        """Read-compare-PUT: servers disagree on no-op updates, so the adapter decides "unchanged"."""
        resource_type = checked_type(resource.get("resourceType") if isinstance(resource, dict) else None)
        path = resource_path(resource_type, resource.get("id"))
        if if_match is not None:
            checked_id(if_match, "if_match version id")
        for attempt in range(2):
            current = self._current_or_none(resource_type, resource["id"])
            if current is not None:
                current_vid = meta_version(current)
                if if_match is not None and current_vid is not None and current_vid != if_match:
                    raise PreconditionFailed(
                        f"FHIR update {path}: If-Match version {if_match} is not the current {current_vid}"
                    )
                if without_meta(current) == without_meta(resource):
                    return WriteResult("unchanged", current, resource_type, resource["id"], current_vid)
                expected = current_vid or if_match
            else:
                expected = if_match
            headers = {"Prefer": "return=representation"}
            if expected is not None:
                headers["If-Match"] = f'W/"{expected}"'
            try:
                response = self._request(
                    "PUT", path, json_body=resource, headers=headers, interaction="update"
                )
            except FhirError as exc:
                # Someone wrote between our GET and PUT; re-read once unless the caller pinned a version.
                if exc.status == 412 and if_match is None and attempt == 0:
                    continue
                raise
            if response.status_code == 201:
                return self._write_result("created", response, resource_type, "update", resource["id"])
            result = self._write_result("updated", response, resource_type, "update", resource["id"])
            if current is None and first_version(response, result.resource, resource_type):
                # Some servers answer 200 to a PUT that creates; the first version says what it did.
                return WriteResult("created", result.resource, resource_type, result.id, result.version_id)
            if current is not None and result.version_id == meta_version(current):
                return WriteResult("unchanged", result.resource, resource_type, result.id, result.version_id)
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    def delete(self, resource_type: str, id: str) -> WriteResult:
        """Reads first: several servers answer 204 even when nothing was there to delete."""
        path = resource_path(resource_type, id)
        if self._current_or_none(resource_type, id) is None:
            return WriteResult("gone", None, resource_type, id, None)
        try:
            response = self._request("DELETE", path, interaction="delete")
        except (ResourceNotFound, ResourceGone):
            return WriteResult("gone", None, resource_type, id, None)
        return WriteResult("deleted", None, resource_type, id, etag_version(response.headers.get("ETag")))

    def search(self, resource_type: str, params: SearchParams | None = None) -> SearchResult:
        checked_type(resource_type)
        query = query_pairs(resource_type, params)
        # HAPI's next links point at the server base (?_getpages=...), not at the type.
        path = "" if any(name == "_getpages" for name, _ in query) else resource_type
        bundle = self._bundle(
            self._request("GET", path, params=query, interaction="search"), "search", resource_type
        )
        resources = [
            entry["resource"]
            for entry in bundle.get("entry", [])
            if isinstance(entry.get("resource"), dict)
            and (entry.get("search") or {}).get("mode", "match") == "match"
        ]
        total = bundle.get("total")
        return SearchResult(resources, total if isinstance(total, int) else None, next_page_params(bundle))

    def transaction(self, bundle: Resource) -> Resource:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidResource("transaction: expected a Bundle resource")
        if bundle.get("type") not in ("transaction", "batch"):
            raise InvalidResource(
                f"transaction: Bundle.type must be 'transaction' or 'batch', got {bundle.get('type')!r}"
            )
        entries = list(bundle.get("entry") or [])
        size = self.max_transaction_entries
        if len(entries) <= size:
            return self._post_bundle(bundle)
        if bundle["type"] == "transaction":
            check_splittable(entries, size)
        # Over the server's limit: consecutive bundles of at most `size` entries, each all-or-nothing
        # on its own (a failure leaves the earlier chunks applied: callers re-run idempotent writes).
        responses: list[Resource] = []
        for start in range(0, len(entries), size):
            chunk = {**bundle, "entry": entries[start:start + size]}
            responses.append(self._post_bundle(chunk))
        merged = {k: v for k, v in responses[0].items() if k not in ("entry", "link")}
        merged["entry"] = [entry for response in responses for entry in response.get("entry", [])]
        return merged

    def _post_bundle(self, bundle: Resource) -> Resource:
        response = self._request("POST", "", json_body=bundle, interaction="transaction", idempotent=False)
        answered = self._bundle(response, "transaction", "Bundle")
        for entry in answered.get("entry") or []:
            self.versions.remember(entry.get("resource") if isinstance(entry, dict) else None)
        return answered

    def history(self, resource_type: str, id: str) -> Resource:
        """All versions in one Bundle: servers page history, the port promises every version."""
        path = f"{resource_path(resource_type, id)}/_history"
        bundle = self._bundle(self._request("GET", path, interaction="history"), "history", path)
        entries = list(bundle.get("entry", []))
        next_params = next_page_params(bundle)
        for _ in range(_MAX_HISTORY_PAGES):
            if next_params is None:
                break
            page_path = "" if "_getpages" in next_params else path
            query = query_pairs(resource_type, next_params)
            page = self._bundle(
                self._request("GET", page_path, params=query, interaction="history"), "history", path
            )
            entries.extend(page.get("entry", []))
            next_params = next_page_params(page)
        else:
            raise ServerError(f"history {path}: more than {_MAX_HISTORY_PAGES} pages")
        merged = {k: v for k, v in bundle.items() if k not in ("link", "entry")}
        merged["entry"] = [with_etag(e) for e in entries]
        merged.setdefault("total", len(entries))
        return merged

    def capabilities(self) -> Resource:
        """The server's CapabilityStatement (`GET [base]/metadata`, FHIR R4 §3.1.0.6)."""
        return self._resource(self._request("GET", "metadata", interaction="capabilities"), "capabilities",
                              "metadata")

    # -- responses ------------------------------------------------------------------------------

    def _current_or_none(self, resource_type: str, id: str) -> Resource | None:
        try:
            return self.read(resource_type, id)
        except (ResourceNotFound, ResourceGone):
            return None

    def _resource(self, response: httpx.Response, interaction: str, label: str) -> Resource:
        body = json_or_none(response)
        if not isinstance(body, dict) or "resourceType" not in body:
            raise ServerError(
                f"FHIR {interaction} {label}: the server answered {response.status_code} without a resource"
            )
        return body

    def _bundle(self, response: httpx.Response, interaction: str, label: str) -> Resource:
        body = self._resource(response, interaction, label)
        if body.get("resourceType") != "Bundle":
            raise ServerError(f"FHIR {interaction} {label}: expected a Bundle, got {body['resourceType']}")
        return body

    def _write_result(
        self,
        outcome: WriteOutcome,
        response: httpx.Response,
        resource_type: str,
        interaction: str,
        known_id: str | None = None,
    ) -> WriteResult:
        body = json_or_none(response)
        location = response.headers.get("Content-Location") or response.headers.get("Location")
        id_, vid = location_ids(location, resource_type)
        id_ = id_ or known_id
        vid = vid or etag_version(response.headers.get("ETag"))
        if not (isinstance(body, dict) and body.get("resourceType") == resource_type):
            # The server ignored Prefer: return=representation; fetch what it stored.
            if id_ is None:
                raise ServerError(
                    f"FHIR {interaction} {resource_type}: no resource and no Location in the answer"
                )
            body = self.vread(resource_type, id_, vid) if vid else self.read(resource_type, id_)
        id_ = body.get("id") or id_
        vid = meta_version(body) or vid
        if not id_:
            raise ServerError(f"FHIR {interaction} {resource_type}: the server returned no id")
        self.versions.remember(body)
        return WriteResult(outcome, body, resource_type, id_, vid)
