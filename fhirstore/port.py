"""The `FhirStore` port: the only way the core reads and writes FHIR data.

Resources are plain R4 JSON dicts on this interface (hot paths stay dicts; validation with
`fhir.resources.R4B` happens at boundaries and in tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Resource = dict[str, Any]
SearchParams = Mapping[str, str | Sequence[str]]
WriteOutcome = Literal["created", "updated", "unchanged", "exists", "deleted", "gone"]


@dataclass(frozen=True)
class Read:
    """One read: the resource `resource_type/id`, or (no id) every match of a search."""

    resource_type: str
    id: str | None = None
    params: SearchParams | None = None


# What a Read answers: the resource (None when it does not exist or was deleted), or a search's matches.
Answer = Resource | list[Resource] | None


@dataclass(frozen=True)
class WriteResult:
    """What a write did.

    outcome: created | updated | unchanged (update with content equal to the current version:
    no new version, no event) | exists (conditional create found a match: nothing written) |
    deleted | gone (delete of something already deleted or never there).
    """

    outcome: WriteOutcome
    resource: Resource | None
    resource_type: str
    id: str
    version_id: str | None

    @property
    def wrote(self) -> bool:
        return self.outcome in ("created", "updated", "deleted")


@dataclass(frozen=True)
class SearchResult:
    resources: list[Resource]
    total: int | None = None  # set when the server counted (always for the embedded store)
    next_params: dict[str, str | list[str]] | None = field(default=None)  # params of the next page, if any


class FhirStore(Protocol):
    """FHIR R4 read/write/search, as the core needs it.

    Errors are the typed exceptions of `fhirstore.errors`.
    """

    def read(self, resource_type: str, id: str) -> Resource:
        """Current version. ResourceNotFound if never existed, ResourceGone if deleted."""
        ...

    def vread(self, resource_type: str, id: str, version_id: str) -> Resource:
        """A specific version (also of a deleted resource's earlier versions)."""
        ...

    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        """Create with a server-assigned id. `if_none_exist` is a search query string
        (e.g. "identifier=urn:vigil:alert|abc"): 0 matches -> create, 1 -> outcome "exists" with
        that resource, >1 -> PreconditionFailed."""
        ...

    def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        """PUT to resource["id"] (create-on-update allowed). `if_match` is a version id (the
        HTTP adapter sends W/"<vid>"); a mismatch raises PreconditionFailed. Content equal to the
        current version (ignoring meta) is a no-op with outcome "unchanged"."""
        ...

    def delete(self, resource_type: str, id: str) -> WriteResult:
        ...

    def search(self, resource_type: str, params: SearchParams | None = None) -> SearchResult:
        """FHIR search. Supported at least: _id, identifier, subject/patient, code, component-code,
        combo-code, date (effective time), status, _lastUpdated, _count, _sort, _summary=count,
        plus per-type params documented by each adapter."""
        ...

    def transaction(self, bundle: Resource) -> Resource:
        """Process a Bundle of type transaction (all-or-nothing) or batch (each entry on its own).
        Returns the transaction-response / batch-response Bundle."""
        ...

    def history(self, resource_type: str, id: str) -> Resource:
        """A Bundle of type "history": every version, newest first. Each entry has
        request.method (POST/PUT/DELETE) and response.etag W/"<vid>"; a delete entry has no
        resource."""
        ...


class EventOutbox(Protocol):
    """The change events a store committed with its writes and nobody has delivered yet.

    The embedded store keeps one (`fhirstore.sqlite`): each write records its Event Grid event
    (`fhirstore.events`) in the write's own transaction; the local host relays the pending ones to
    the Event Grid functions and then settles them. A FHIR server publishes its events itself (Azure
    Health Data Services through Event Grid), so its store has no outbox (`Services.outbox` is None).
    """

    def outbox_pending(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Undelivered events, oldest first, as (seq, Event Grid event)."""
        ...

    def outbox_done(self, seqs: Sequence[int]) -> None:
        """Forget delivered events; unknown seqs are ignored, so a retried call is harmless."""
        ...

    def outbox_find(self, versions: Sequence[tuple[str, str, str]]) -> list[int]:
        """The seqs of the undelivered events of these (type, id, version) versions."""
        ...

    def outbox_size(self) -> int:
        """How many events wait for delivery."""
        ...


# -- what some stores do besides the port -------------------------------------------------------
# Code that can use one of these checks `isinstance(store, <protocol>)` and otherwise does the
# same through the port: the answers are the same either way, only the cost differs.


@runtime_checkable
class BatchReads(Protocol):
    """A store where each read is a round trip (the HTTP adapter) and several go as one batch."""

    def read_batch(self, reads: Sequence[Read]) -> list[Answer]:
        """The answers of `reads`, in order, as separate reads would give them (fhirstore.batch_reads)."""
        ...


@runtime_checkable
class ServesCapabilities(Protocol):
    """A store that can fetch the server's CapabilityStatement (`GET [base]/metadata`)."""

    def capabilities(self) -> Resource:
        ...


@runtime_checkable
class ChangeMarks(Protocol):
    """A store that tells cheaply whether resources of some types changed (the embedded store)."""

    def change_mark(self, types: Sequence[str]) -> tuple[tuple[str, int], ...]:
        """A value that changes whenever a resource of one of `types` is written or deleted."""
        ...


@runtime_checkable
class ReadingsWindows(Protocol):
    """A store that answers a patient's readings from an index (the embedded store's
    `fhirstore.readings_index`), without searching and decoding Observations."""

    def readings_window(self, patient_ref: str, metrics: Sequence[str] | set[str] | frozenset[str],
                        since: str) -> list[Any]:
        """The `rules.readings.Reading`s of `metrics` in the patient's Observations from `since` on."""
        ...
