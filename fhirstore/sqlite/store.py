"""The embedded FHIR store: R4 JSON in one SQLite file, with search indexes and an event outbox.

Every write commits the new version, its search index rows and its Created/Updated/Deleted event
(in the outbox table) in ONE SQLite transaction, so an event exists exactly when its version does,
whatever crashes in between. A relay reads `outbox_pending()` and calls `outbox_done()` after
delivery. The tables are in `schema.py`; versions are written by `versions.py`, searches compiled
by `query.py`, Bundles run by `bundle.py` and events kept by `outbox.py`.
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from common.clock import Clock, SystemClock, iso
from common.sqlite_db import ThreadConnections, transaction
from common.sqlite_schema import SchemaError
from common.storage import tag_error
from fhirstore import readings_index
from fhirstore.errors import FhirError, InvalidResource, InvalidSearch, ServerError
from fhirstore.port import Resource, SearchParams, SearchResult, WriteResult
from fhirstore.search_params import REGISTRY
from fhirstore.sqlite import bundle as bundles
from fhirstore.sqlite import outbox, query, versions
from fhirstore.sqlite.bundle import Entry
from fhirstore.sqlite.catalog import ParamCatalog
from fhirstore.sqlite.schema import FHIR_SCHEMA, VERSION_BITS
from fhirstore.sqlite.versions import Tx

DEFAULT_TOPIC = "/subscriptions/local/resourceGroups/local/providers/Microsoft.HealthcareApis/workspaces/vigil"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_P = ParamSpec("_P")
_R = TypeVar("_R")


_Method = Callable[Concatenate["SqliteFhirStore", _P], _R]


def _typed_errors(method: _Method[_P, _R]) -> _Method[_P, _R]:
    """SQLite failures (disk full, locked past the timeout, I/O) leave as the port's ServerError."""

    @functools.wraps(method)
    def wrapper(self: SqliteFhirStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            tag_error(exc, self._path)  # which file, for the CLI's storage-fault line
            raise ServerError(f"the embedded FHIR store failed ({method.__name__}): {exc}") from exc

    return wrapper


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
        self._connections: ThreadConnections | None = None
        self._closed = False
        self._catalog = ParamCatalog()
        self._searches = query.SearchCache(self._catalog, self._db)
        self._init_schema()

    # ------------------------------------------------------------ connections

    def _db(self) -> sqlite3.Connection:
        if self._closed or self._connections is None:
            raise ServerError("the embedded FHIR store is closed")
        return self._connections.get()

    def close(self) -> None:
        """Close every connection this store opened in this process."""
        self._closed = True
        if self._connections is not None:
            self._connections.close()

    def __enter__(self) -> SqliteFhirStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_schema(self) -> None:
        try:
            # Plain connections on this hot path (a wrapped cursor halves read throughput): errors
            # are tagged with the file where they leave the store instead (_typed_errors, _write_tx).
            self._connections = ThreadConnections(self._path, FHIR_SCHEMA, tag_errors=False, cached_statements=256,
                                                  pragmas=["cache_size = -32000"])
            with self._write_tx() as tx:  # a file written before the readings index gets it once
                readings_index.build(tx.db, tx.iso, VERSION_BITS)
            self._ensure_types(REGISTRY)
            self._catalog.load_spans(self._db())
        except SchemaError as exc:
            raise ServerError(str(exc)) from exc
        except sqlite3.Error as exc:
            tag_error(exc, self._path)
            raise ServerError(f"cannot open the FHIR store at {self._path}: {exc}") from exc

    @contextmanager
    def _write_tx(self) -> Iterator[Tx]:
        """One IMMEDIATE transaction: writers queue here (busy_timeout) instead of failing later."""
        db = self._db()
        stage = "begin"
        try:
            with transaction(db):
                stage = "write"
                now = self._clock.now().astimezone(UTC)
                millis = now.replace(microsecond=now.microsecond // 1000 * 1000)
                tx = Tx(db, iso(now), (millis - _EPOCH) // timedelta(microseconds=1), self._catalog)
                yield tx
                stage = "commit"
                outbox.count_changes(db, tx.types)
        except sqlite3.Error as exc:
            if stage == "write":  # the write's own failure: _typed_errors names the operation
                raise
            tag_error(exc, self._path)
            if stage == "begin":
                raise ServerError(f"the embedded FHIR store is unavailable: {exc}") from exc
            raise ServerError(f"the embedded FHIR store could not commit: {exc}") from exc
        self._catalog.widen(tx.spans)

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

    def _ensure_types(self, types: Iterable[str]) -> None:
        """Give every (type, parameter) a small integer id, committed before any write uses it."""
        catalog = self._catalog
        wanted = catalog.wanted(types)
        if not wanted:
            return
        names = catalog.names(wanted)
        if catalog.missing(names):
            catalog.load(self._db())
        if catalog.missing(names):
            with self._write_tx() as tx:
                tx.db.executemany("INSERT OR IGNORE INTO params (name) VALUES (?)", [(n,) for n in names])
            catalog.load(self._db())
        catalog.settle(wanted)

    # ------------------------------------------------------------ reads

    @_typed_errors
    def read(self, resource_type: str, id: str) -> Resource:
        return versions.read(self._db(), resource_type, id)

    @_typed_errors
    def vread(self, resource_type: str, id: str, version_id: str) -> Resource:
        return versions.vread(self._db(), resource_type, id, version_id)

    @_typed_errors
    def history(self, resource_type: str, id: str) -> Resource:
        return versions.history(self._db(), resource_type, id)

    @_typed_errors
    def search(self, resource_type: str, params: SearchParams | None = None) -> SearchResult:
        versions.check_type(resource_type, InvalidSearch)
        pairs = query.search_pairs(params)
        compiled = self._searches.compile(resource_type, pairs)
        with self._read_tx() as db:
            return query.run(db, compiled, pairs)

    @_typed_errors
    def readings_window(self, patient_ref: str, metrics: Sequence[str] | set[str] | frozenset[str],
                        since: str) -> list[Any]:
        """The readings `rules.readings` finds in the patient's Observations of `metrics` that
        match `date=ge<since>`, from the index written with each Observation (no JSON read)."""
        return readings_index.window(self._db(), patient_ref, metrics, since)

    # ------------------------------------------------------------ writes

    @_typed_errors
    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        resource_type = versions.check_resource(resource, need_id=False)
        criteria = None
        if if_none_exist is not None:
            criteria = query.conditional_criteria(if_none_exist, "If-None-Exist")
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            if criteria is not None:
                found = self._searches.match(tx.db, resource_type, criteria, f"conditional create of {resource_type}")
                if found is not None:
                    return versions.existing(tx.db, resource_type, found)
            return versions.insert(tx, resource_type, str(uuid.uuid4()), resource, "POST")

    @_typed_errors
    def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        resource_type = versions.check_resource(resource, need_id=True)
        expected = versions.etag_version(if_match) if if_match is not None else None
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            return versions.update(tx, resource_type, resource["id"], resource, expected)

    @_typed_errors
    def delete(self, resource_type: str, id: str) -> WriteResult:
        versions.check_type(resource_type, InvalidResource)
        self._ensure_types([resource_type])
        with self._write_tx() as tx:
            return versions.delete(tx, resource_type, id)

    @_typed_errors
    def transaction(self, bundle: Resource) -> Resource:
        kind = bundles.bundle_kind(bundle)
        parsed = [bundles.parse_entry(i, e) for i, e in enumerate(bundle.get("entry") or [])]
        if kind == "batch":
            return {"resourceType": "Bundle", "type": "batch-response",
                    "entry": [self._batch_entry(e) for e in parsed]}
        entries: list[Entry] = []
        for e in parsed:
            if isinstance(e, FhirError):
                raise e
            entries.append(e)
        self._ensure_types(sorted({e.resource_type for e in entries}))
        with self._write_tx() as tx:
            responses = bundles.transaction_in(tx, entries, self._searches)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}

    def _batch_entry(self, e: Entry | FhirError) -> dict[str, Any]:
        if isinstance(e, FhirError):
            return bundles.error_response(e)
        try:
            if e.method == "GET":
                with self._read_tx() as db:
                    return bundles.apply_get(db, e, self._searches)
            self._ensure_types([e.resource_type])
            with self._write_tx() as tx:
                if e.method in ("POST", "PUT"):
                    bundles.assign_id(tx, e, self._searches)
                return bundles.apply_write(tx, e, self._searches)
        except FhirError as exc:
            return bundles.error_response(exc)

    # ------------------------------------------------------------ outbox (fhirstore.port.EventOutbox)

    @_typed_errors
    def outbox_pending(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Undelivered events, oldest first, as (seq, Event Grid event of `fhirstore.events`)."""
        return outbox.pending(self._db(), limit, account=self._account, topic=self._topic)

    @_typed_errors
    def outbox_done(self, seqs: Sequence[int]) -> None:
        """Forget delivered events (unknown seqs are ignored, so a retried call is harmless)."""
        if not seqs:
            return
        with self._write_tx() as tx:
            outbox.done(tx.db, seqs)

    @_typed_errors
    def outbox_find(self, versions: Sequence[tuple[str, str, str]]) -> list[int]:
        """The seqs of the undelivered events of these (type, id, version) versions: a host that
        acted on them in process settles them with `outbox_done` (an event it never acted on
        stays for the relay)."""
        return outbox.find(self._db(), versions)

    @_typed_errors
    def outbox_size(self) -> int:
        return outbox.size(self._db())

    @_typed_errors
    def change_mark(self, types: Sequence[str]) -> tuple[tuple[str, int], ...]:
        """A value that changes whenever a resource of one of `types` is written or deleted, by
        any process on this file (a counter per type, moved in the write's own transaction):
        caches compare it to know whether what they hold may be stale."""
        return outbox.change_mark(self._db(), types)
