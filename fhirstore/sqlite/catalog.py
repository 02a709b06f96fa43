"""Small integer ids for the (resource type, search parameter) pairs the index tables store.

Index rows name their parameter by id (`params` table), so every process on the file must agree on
them: ids are committed before any write uses them and never change. The catalog also keeps the
widest date range committed per parameter (`spans`), which bounds the index range a date search reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from fhirstore.index_rows import indexed_params, storage_for
from fhirstore.search_params import primary_date
from fhirstore.sqlite.conditions import Rows


class ParamCatalog:
    """What this process knows of the file's parameter ids and date spans (plain dicts: a lookup
    that races another thread's fill finds nothing or the same value)."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.type_pids: dict[str, dict[str, int]] = {}  # settled types: ids of every indexed parameter
        self.primary_rows: dict[str, tuple[str, ...]] = {}  # index rows of a type's primary date
        self.search_rows: dict[str, dict[str, Rows]] = {}
        self.spans: dict[int, int] = {}  # committed widest (hi - lo) per date parameter id

    def wanted(self, types: Iterable[str]) -> list[str]:
        """The types not settled yet."""
        return [t for t in types if t not in self.type_pids]

    @staticmethod
    def names(types: Iterable[str]) -> list[str]:
        return [f"{t}.{p}" for t in types for p in indexed_params(t)]

    def missing(self, names: Iterable[str]) -> bool:
        return any(n not in self.pids for n in names)

    def load(self, db: sqlite3.Connection) -> None:
        self.pids.update((name, pid) for pid, name in db.execute("SELECT pid, name FROM params"))

    def load_spans(self, db: sqlite3.Connection) -> None:
        self.spans.update(db.execute("SELECT pid, span FROM spans"))

    def settle(self, types: Iterable[str]) -> None:
        """Record the ids of `types` (all in `pids` by now) for writes and cached searches."""
        for t in types:
            primary = primary_date(t)
            self.primary_rows[t] = storage_for(t)[primary].names if primary else ()
            self.type_pids[t] = {p: self.pids[f"{t}.{p}"] for p in indexed_params(t)}

    def widen(self, spans: dict[int, int]) -> None:
        """Take in the widest ranges a transaction committed (only committed widths may spare
        later upserts of the `spans` table)."""
        for pid, span in spans.items():
            self.spans[pid] = max(span, self.spans.get(pid, -1))

    def rows_of(self, db: sqlite3.Connection, resource_type: str) -> dict[str, Rows]:
        """Where each parameter's index rows are: parameter ids (-1: never written) and, for an
        alias such as `patient`, the one target type it keeps."""
        found = self.search_rows.get(resource_type)
        if found is not None:
            return found
        pids = self.type_pids.get(resource_type)
        if pids is None:
            self.load(db)  # another process may have written this type
            pids = {p: self.pids.get(f"{resource_type}.{p}", -1) for p in indexed_params(resource_type)}
        found = {name: Rows(tuple(pids[n] for n in where.names), where.target_type)
                 for name, where in storage_for(resource_type).items()}
        if resource_type in self.type_pids:
            self.search_rows[resource_type] = found
        return found
