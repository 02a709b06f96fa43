"""The store side of ingest (handlers.ingest): what a batch merges into, and writing it.

Reads: on a store where each read is a round trip (the HTTP adapter), every Observation a batch's
readings can land in is read in ONE query before mapping (`prefetch`, an `_id` search:
fhirstore.batch_reads.read_many) instead of one request per Observation. What the prefetch
cannot know (it failed, or an id it did not foresee) is read one by one, as before.

Writes: the batch's Observations go in ONE FHIR transaction, each update with If-Match on the
version its merge was computed from; when one entry spoils the all-or-nothing transaction, each is
written on its own so only its messages are parked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fhirstore.batch_reads import read_many
from fhirstore.errors import FhirError, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from ingest.poison import POISON_AT_STORE, poison_error
from ingest.report import IngestReport
from ingest.templates.errors import MessageError
from ingest.templates.fhir_model import ObservationChange

# FHIR errors worth retrying the whole batch for (the server, not the message, is the problem).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Also retried: 412, another writer changed an Observation this batch merged into (If-Match). The
# re-delivered batch reads the new version and merges again, so neither writer's values are lost.
# (A *create* racing another create of the same Observation is not guarded: docs/decisions.md.)
RETRY_BATCH_STATUSES = TRANSIENT_STATUSES | {412}


@dataclass
class Write:
    change: ObservationChange
    messages: set[int]


class StoredObservations:
    """The stored Observations a mapping pass merges into: prefetched, else read one by one."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self._known: dict[str, dict[str, Any] | None] = {}

    @property
    def round_trips(self) -> bool:
        """Whether each read is a network request (a store that batches reads): only then does a
        prefetch pay for the grouping it repeats (measured: on the embedded store it does not)."""
        return getattr(self.store, "read_batch", None) is not None

    def prefetch(self, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self._known]
        if len(wanted) < 2:
            return
        try:
            found = read_many(self.store, "Observation", wanted)
        except (FhirError, *POISON_AT_STORE):
            return  # the reads one by one meet the same problem and say what it is
        for oid in wanted:
            self._known[oid] = found.get(oid)

    def get(self, oid: str) -> dict[str, Any] | None:
        if oid in self._known:
            return self._known[oid]
        try:
            return self.store.read("Observation", oid)
        except (ResourceNotFound, ResourceGone):
            return None

    def forget(self) -> None:
        """After a write: what was read is no longer what is stored."""
        self._known.clear()


def write_all(store: FhirStore, writes: list[Write], report: IngestReport,
              park: Callable[[int, MessageError], None], dead: Callable[[int], bool]) -> None:
    todo = [w for w in writes if w.change.action != "noop"]
    report.unchanged += len(writes) - len(todo)
    if not todo:
        return
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": w.change.resource, "request": _put(w.change)} for w in todo
    ]}
    try:
        response = store.transaction(bundle)
    except FhirError as exc:
        if exc.status in RETRY_BATCH_STATUSES:
            raise
        response = None
    except POISON_AT_STORE:
        response = None
    if response is None:  # one entry spoiled the all-or-nothing transaction: write one by one
        for w in todo:
            if not (w.messages and all(dead(i) for i in w.messages)):
                _write_one(store, w, report, park)
        return
    for entry in response.get("entry", []):
        status = str((entry.get("response") or {}).get("status", ""))
        if status.startswith("201"):
            report.created += 1
        else:
            report.updated += 1
        stored = entry.get("resource")
        if isinstance(stored, dict):
            report.stored.append(stored)


def _write_one(store: FhirStore, w: Write, report: IngestReport, park: Callable[[int, MessageError], None]) -> None:
    try:
        result = store.update(w.change.resource, if_match=_merged_version(w.change))
    except FhirError as exc:
        if exc.status in RETRY_BATCH_STATUSES:
            raise
        error = MessageError("fhir_rejected", f"FHIR server answered {exc.status}: {exc}")
    except POISON_AT_STORE as exc:
        error = poison_error(exc, "writing the Observation")
    else:
        if result.resource is not None:
            report.stored.append(result.resource)
        if result.outcome == "created":
            report.created += 1
        elif result.outcome == "updated":
            report.updated += 1
        else:
            report.unchanged += 1
        return
    for i in sorted(w.messages):
        park(i, error)


def _merged_version(change: ObservationChange) -> str | None:
    """The version a merge was computed from: written back only if it is still the current one."""
    if change.action != "update":
        return None
    return (change.resource.get("meta") or {}).get("versionId")


def _put(change: ObservationChange) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PUT", "url": f"Observation/{change.id}"}
    version = _merged_version(change)
    if version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return request
