"""Several reads in one round trip, on a store where each read is a network request.

On the HTTP adapter every read costs a round trip (on Azure, a metered request), so the reads one
step needs together go as ONE FHIR `batch` Bundle of GET entries (FHIR R4 http.html#transaction:
"batch" entries are processed independently, GET entries included) and several resources by id as
ONE `_id` search. Any other store answers each read on its own: the embedded store has no round
trip to save. Either way the answers are the ones the separate reads would give.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from fhirstore.errors import ResourceGone, ResourceNotFound, ServerError, error_for_status
from fhirstore.paging import search_all
from fhirstore.port import Answer, BatchReads, FhirStore, Read, Resource

# `_id` values per search: a GET's URL stays well under the 8 KiB most servers and gateways accept.
IDS_PER_SEARCH = 50


def read_together(store: FhirStore, reads: Sequence[Read]) -> list[Answer]:
    """The answers of `reads`, in order; one batch request where the store batches them."""
    if isinstance(store, BatchReads) and len(reads) > 1:
        return store.read_batch(reads)
    return [read_one(store, r) for r in reads]


def read_one(store: FhirStore, read: Read) -> Answer:
    if read.id is None:
        return search_all(store, read.resource_type, read.params)
    try:
        return store.read(read.resource_type, read.id)
    except (ResourceNotFound, ResourceGone):
        return None


def read_many(store: FhirStore, resource_type: str, ids: Iterable[str]) -> dict[str, Resource]:
    """The current version of each of `ids` that exists, by id (a missing or deleted one is left
    out), in one `_id` search per `IDS_PER_SEARCH` ids (`_id` takes a comma-separated list: FHIR
    R4 search.html#token, ids hold no comma)."""
    wanted = sorted(set(ids))
    found: dict[str, Resource] = {}
    for start in range(0, len(wanted), IDS_PER_SEARCH):
        chunk = wanted[start:start + IDS_PER_SEARCH]
        for resource in search_all(store, resource_type, {"_id": ",".join(chunk), "_count": str(len(chunk))}):
            if resource.get("id") in chunk:
                found[resource["id"]] = resource
    return found


__all__ = ["IDS_PER_SEARCH", "Answer", "Read", "batch_answers", "batch_bundle", "read_many", "read_one",
           "read_together"]


# -- the batch Bundle (used by fhirstore.http_store.HttpFhirStore.read_batch) ---------------------

def batch_bundle(reads: Sequence[Read]) -> Resource:
    entries = []
    for r in reads:
        if r.id is not None:
            url = f"{r.resource_type}/{r.id}"
        else:
            pairs = [(k, v) for k, vs in (r.params or {}).items() for v in ([vs] if isinstance(vs, str) else vs)]
            url = f"{r.resource_type}?{urlencode(pairs)}" if pairs else r.resource_type
        entries.append({"request": {"method": "GET", "url": url}})
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def batch_answers(store: FhirStore, reads: Sequence[Read], response: Resource) -> list[Answer]:
    """Each entry of a batch-response as its Read's answer. A search whose matches did not all
    come in the entry (a next page, or a total above what arrived) is read again through the
    store's own paging, so no answer is ever a truncated list."""
    entries = response.get("entry") or []
    if len(entries) != len(reads):
        raise ServerError(f"FHIR batch: {len(reads)} entries sent, {len(entries)} answered")
    out: list[Answer] = []
    for read, entry in zip(reads, entries, strict=True):
        status = _status(entry)
        if read.id is not None and status in (404, 410):
            out.append(None)
            continue
        if status >= 300 or not isinstance(entry.get("resource"), dict):
            outcome = (entry.get("response") or {}).get("outcome")
            raise error_for_status(status if status >= 300 else 502, f"FHIR batch GET {read.resource_type}: "
                                   f"entry answered {status or 'without a status'}", outcome)
        found = entry["resource"]
        if read.id is not None:
            out.append(found)
            continue
        matches = [e["resource"] for e in found.get("entry") or [] if isinstance(e.get("resource"), dict)
                   and (e.get("search") or {}).get("mode", "match") == "match"]
        total = found.get("total")
        paged = any(link.get("relation") == "next" for link in found.get("link") or [])
        if paged or (isinstance(total, int) and total > len(matches)):
            matches = search_all(store, read.resource_type, read.params)
        out.append(matches)
    return out


def _status(entry: dict[str, Any]) -> int:
    text = str((entry.get("response") or {}).get("status") or "").strip()
    head = text.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0
