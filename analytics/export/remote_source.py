"""Changes from any FHIR R4 server: type-level `_history` where the server offers it, else a paged search
by `_lastUpdated` window.

A plain search only returns what is live, so **a paged search cannot see deletes**: a resource deleted
between two runs simply stops appearing, and the lake keeps its last state. Type-level history
(`GET [base]/{Type}/_history?_since=…`, FHIR R4 §3.1.0.12) lists every version, deletes included (an entry
with `request.method = DELETE` and no resource), so where the server's CapabilityStatement lists the
`history-type` interaction for a type, that type is read from its history and its deletes become
tombstones. The summary says, per type, which way it was read.

The window is the exporter's ``(after, upto]`` (docs/analytics.md, "Windows"), at millisecond precision
on both ends: servers store `meta.lastUpdated` in milliseconds (Medplum) or finer (the embedded store),
and `gt`/`le` on the same millisecond boundaries partition the timeline (FHIR R4 §3.1.1.4.6).

Paged search follows the server's `next` links. Offset paging skips a match when an earlier match leaves
the window meanwhile (it was updated again, or deleted), so every type's search is bracketed by two counts
(`_summary=count`): a window's matches can only leave it (a new write is stamped after `upto`), so equal
counts prove nothing left and nothing was skipped; unequal counts redo that type's search.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from analytics.export.http import FhirHttp, RemoteError
from analytics.export.source import Change
from common import jsonnum
from fhirstore.capabilities import search_params_listed

log = logging.getLogger(__name__)

PAGE_SIZE = 500
MAX_PAGES = 100_000
RECOUNT_ATTEMPTS = 3


def iso_ms(micros: int) -> str:
    """A FHIR instant at millisecond precision (floored)."""
    return datetime.fromtimestamp((micros // 1000) / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def micros_of(instant: str) -> int:
    parsed = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{instant!r} has no time zone")
    return int(parsed.timestamp() * 1_000_000)


def _ms(micros: int) -> int:
    return (micros // 1000) * 1000


class FhirServerSource:
    """A FHIR server read by search or history, per resource type."""

    kind = "search"

    def __init__(self, http: FhirHttp, types: list[str] | None = None, *, use_history: bool = True,
                 page_size: int = PAGE_SIZE) -> None:
        self.http = http
        self.page_size = page_size
        statement = self._statement()
        self.types = types or _searchable_types(statement)
        if not self.types:
            raise RemoteError("the server's CapabilityStatement lists no searchable resource type; "
                              "name the types to export (--type)")
        self.methods: dict[str, str] = {}
        for rtype in self.types:
            listed = search_params_listed(statement, rtype) if statement else None
            if use_history and _interactions(statement, rtype) >= {"history-type"}:
                self.methods[rtype] = "history"
            elif listed is None or "_lastUpdated" in listed or not statement:
                self.methods[rtype] = "search"
            else:
                raise RemoteError(f"{rtype} cannot be exported by window: the server's CapabilityStatement "
                                  "lists neither the history-type interaction nor the _lastUpdated search "
                                  "parameter for it")

    @property
    def deletes_visible(self) -> dict[str, bool]:
        return {t: m == "history" for t, m in self.methods.items()}

    def close(self) -> None:
        self.http.close()

    def _statement(self) -> dict[str, Any] | None:
        try:
            statement = self.http.json("metadata")
        except RemoteError as exc:
            if exc.status in (404, 405, 406, 501):
                return None
            raise
        return statement if statement.get("resourceType") == "CapabilityStatement" else None

    def open(self, after: int, upto: int) -> RemoteWindow:
        return RemoteWindow(self, _ms(after), _ms(upto))


class RemoteWindow:
    def __init__(self, source: FhirServerSource, after: int, upto: int) -> None:
        self.source, self.after, self.upto = source, after, upto
        self.total: int | None = None

    def types(self) -> list[str]:
        return list(self.source.types)

    def changes(self, resource_type: str) -> Iterator[Change]:
        if self.source.methods[resource_type] == "history":
            return self._history(resource_type)
        return self._searched(resource_type)

    # -- paged search ------------------------------------------------------------------------------
    def _window_params(self) -> list[tuple[str, str]]:
        return [("_lastUpdated", f"gt{iso_ms(self.after)}"), ("_lastUpdated", f"le{iso_ms(self.upto)}")]

    def _count(self, resource_type: str) -> int | None:
        bundle = self.source.http.json(resource_type, params=[*self._window_params(), ("_summary", "count")])
        total = bundle.get("total")
        return total if isinstance(total, int) else None

    def _searched(self, resource_type: str) -> Iterator[Change]:
        for attempt in range(RECOUNT_ATTEMPTS):
            before = self._count(resource_type)
            found: dict[str, Change] = {}
            for change in self._pages(resource_type):
                found[change.id] = change  # a later page's copy is the newer state
            after = self._count(resource_type)
            if before is None or after is None:
                log.warning("%s: the server gives no count, so skipped matches cannot be ruled out", resource_type)
                break
            if before == after:
                break
            log.warning("%s: matches left the window while paging (%d then %d), searching again (%d/%d)",
                        resource_type, before, after, attempt + 1, RECOUNT_ATTEMPTS)
        else:
            raise RemoteError(f"{resource_type}: the window kept changing while it was paged "
                              f"({RECOUNT_ATTEMPTS} attempts); the next run tries again")
        yield from sorted(found.values(), key=lambda c: (c.updated, c.id))

    def _pages(self, resource_type: str) -> Iterator[Change]:
        params = [*self._window_params(), ("_sort", "_lastUpdated"), ("_count", str(self.source.page_size))]
        for bundle in self._bundles(resource_type, params, resource_type):
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource")
                if (entry.get("search") or {}).get("mode", "match") != "match" or not isinstance(resource, dict):
                    continue
                yield _live(resource, resource_type)

    # -- history -----------------------------------------------------------------------------------
    def _history(self, resource_type: str) -> Iterator[Change]:
        latest: dict[str, Change] = {}
        params = [("_since", iso_ms(self.after)), ("_count", str(self.source.page_size))]
        for bundle in self._bundles(f"{resource_type}/_history", params, f"{resource_type}/_history"):
            for entry in bundle.get("entry") or []:
                change = _history_change(entry, resource_type)
                # `_since` is inclusive and has no upper end: the window is applied here.
                if change is None or not self.after < _ms(change.updated) <= self.upto:
                    continue
                known = latest.get(change.id)
                if known is None or (known.updated, known.version) < (change.updated, change.version):
                    latest[change.id] = change
        yield from sorted(latest.values(), key=lambda c: (c.updated, c.id))

    def _bundles(self, path: str, params: list[tuple[str, str]], what: str) -> Iterator[dict[str, Any]]:
        """Every page of a search or history, by the server's `next` links (a link seen twice, or more than
        MAX_PAGES pages, is an error rather than a loop)."""
        query: list[tuple[str, str]] | None = params
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            bundle = jsonnum.loads(self.source.http.get(path, params=query).text)
            yield bundle
            nxt = _link(bundle, "next")
            if nxt is None:
                return
            if nxt in seen:
                raise RemoteError(f"{what}: the server's next link repeats an earlier page")
            seen.add(nxt)
            path, query = nxt, None
        raise RemoteError(f"{what}: more than {MAX_PAGES} pages")


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _version(resource: dict[str, Any]) -> int:
    text = str((resource.get("meta") or {}).get("versionId") or "")
    return int(text) if text.isdigit() else 0


def _live(resource: dict[str, Any], resource_type: str) -> Change:
    if resource.get("resourceType") != resource_type or not isinstance(resource.get("id"), str):
        raise RemoteError(f"a {resource_type} search answered a resource that is not a {resource_type} with an id")
    stamp = (resource.get("meta") or {}).get("lastUpdated")
    if not isinstance(stamp, str):
        raise RemoteError(f"{resource_type}/{resource['id']} has no meta.lastUpdated; it cannot be windowed")
    body = jsonnum.dumps(resource, separators=(",", ":"), ensure_ascii=False)
    return Change(resource_type, resource["id"], _version(resource), False, micros_of(stamp), stamp, body)


def _history_change(entry: dict[str, Any], resource_type: str) -> Change | None:
    request = entry.get("request") or {}
    response = entry.get("response") or {}
    resource = entry.get("resource")
    if request.get("method") == "DELETE" or not isinstance(resource, dict):
        url = str(request.get("url") or entry.get("fullUrl") or "")
        parts = url.split("?")[0].rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != resource_type or not isinstance(response.get("lastModified"), str):
            return None
        etag = str(response.get("etag") or "").removeprefix("W/").strip('"')
        stamp = response["lastModified"]
        return Change(resource_type, parts[-1], int(etag) if etag.isdigit() else 0, True, micros_of(stamp),
                      stamp, None)
    return _live(resource, resource_type)


def _interactions(statement: dict[str, Any] | None, resource_type: str) -> set[str]:
    codes: set[Any] = set()
    for rest in (statement or {}).get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") == resource_type:
                codes |= {i.get("code") for i in resource.get("interaction") or [] if isinstance(i, dict)}
    return {c for c in codes if isinstance(c, str)}


def _searchable_types(statement: dict[str, Any] | None) -> list[str]:
    types: set[str] = set()
    for rest in (statement or {}).get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and isinstance(resource.get("type"), str) and \
                    "search-type" in _interactions(statement, resource["type"]):
                types.add(resource["type"])
    return sorted(types)
