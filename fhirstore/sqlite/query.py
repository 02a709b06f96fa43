"""The search compiler: a FHIR search (type and parameters) as one SQL query over the index tables.

`compile_search` turns the parameters into clauses (`conditions.py`), picks the most selective one
to drive the query (its index is walked first, the rest probe each candidate), and adds the sort.
`SearchCache` keeps compiled queries, since the same lookups (a patient's care plans, a device by
identifier) repeat for every reading. `run` pages a compiled query, `match` finds the one resource
a conditional interaction names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from common import jsonnum
from fhirstore.errors import InvalidSearch, PreconditionFailed
from fhirstore.port import SearchParams, SearchResult
from fhirstore.search_params import COLUMN_PARAMS, SearchParam, params_for, primary_date
from fhirstore.sqlite.catalog import ParamCatalog
from fhirstore.sqlite.conditions import NO_ROWS, Clause, Rows, clause, hi_terms, marks, non_negative
from fhirstore.sqlite.schema import vkey

DEFAULT_COUNT = 100
MAX_COUNT = 1000
CONTROL = frozenset({"_count", "_offset", "_sort", "_summary", "_total"})
_COMPILED_MAX = 2048  # compiled searches kept per store
_CONDITIONAL_ONLY = "conditional criteria take search parameters only"


@dataclass
class Query:
    """A compiled search: `sql` is its FROM ... WHERE part, `order` its ORDER BY, plus paging."""

    resource_type: str
    primary_date: str | None
    count: int = DEFAULT_COUNT
    offset: int = 0
    summary_count: bool = False
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (parameter, descending)
    controls: set[str] = field(default_factory=set)
    sql: str = ""
    args: list[Any] = field(default_factory=list)
    order: str = "r.rid"
    order_args: list[Any] = field(default_factory=list)
    dated: bool = False  # has a date or _lastUpdated clause

    def control(self, name: str, modifier: str, value: str, known: Mapping[str, SearchParam]) -> None:
        if modifier:
            raise InvalidSearch(f"'{name}' takes no modifier (got '{name}:{modifier}')")
        if name in self.controls:
            raise InvalidSearch(f"'{name}' may appear only once in a search")
        self.controls.add(name)
        if name == "_count":
            self.count = min(non_negative(name, value), MAX_COUNT)
        elif name == "_offset":
            self.offset = non_negative(name, value)
        elif name == "_summary":
            if value not in ("count", "false"):
                raise InvalidSearch(f"_summary={value} is not supported (use count or false)")
            self.summary_count = value == "count"
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise InvalidSearch(f"_total must be none, estimate or accurate, not {value!r}")
        else:
            for key in value.split(","):
                sort_name = key.strip().removeprefix("-")
                if sort_name not in COLUMN_PARAMS and getattr(known.get(sort_name), "kind", None) != "date":
                    dates = sorted(n for n, p in known.items() if p.kind == "date" and n not in COLUMN_PARAMS)
                    raise InvalidSearch(f"cannot sort {self.resource_type} by '{sort_name}': sort keys are _id, "
                                        f"_lastUpdated{''.join(', ' + d for d in dates)}")
                self.sort.append((sort_name, key.strip().startswith("-")))

    def assemble(self, clauses: list[Clause], pids: Mapping[str, Rows]) -> None:
        self.dated = any(c.bounds is not None or c.name == "_lastUpdated" for c in clauses)
        drivers = [c for c in clauses if c.table is not None]
        driver = min(drivers, key=lambda c: c.rank) if drivers else None
        with_hi = driver is not None and driver.table == "ref"
        if driver is None:
            head = "FROM resources AS r"
            where, args = ["r.type = ?", "r.deleted = 0"], [self.resource_type]
        else:
            sql, args = self._driver(driver, clauses, pids)
            # CROSS JOIN fixes the join order: walk the chosen index first, then probe the rest.
            head = f"FROM ({sql}) AS d CROSS JOIN resources AS r"
            where = ["r.rid = d.rid", "r.deleted = 0"]
        for other in clauses:
            if other is not driver:
                where.append(other.filter)
                args.extend(other.filter_args)
        self.sql = f"{head} WHERE {' AND '.join(where)}"
        self.args = args
        self._order(pids, with_hi)

    def _driver(self, driver: Clause, clauses: list[Clause], pids: Mapping[str, Rows]) -> tuple[str, list[Any]]:
        sql, args = f"SELECT DISTINCT x.rid AS rid FROM {driver.table} x WHERE {driver.where}", list(driver.where_args)
        if driver.table == "resources":
            return sql.replace("DISTINCT ", ""), args
        if driver.table == "ref":
            # Reference rows carry the upper end of the resource's primary date, so "this patient's
            # readings in a window" reads only that part of the patient's history.
            sql = sql.replace("x.rid AS rid", "x.rid AS rid, x.hi AS hi")
            dated = self.primary_date
        elif driver.table == "dt":
            dated = driver.name
        else:
            return sql, args
        # Bounds of several clauses may be combined on one row only for the primary date, which
        # holds one value per resource; any other date parameter uses the driving clause alone.
        if dated == self.primary_date:
            bounds = [c.bounds for c in clauses if c.name == dated and c.bounds is not None]
        else:
            bounds = [driver.bounds] if driver.bounds else []
        span_pids = pids.get(dated, NO_ROWS).pids if dated else ()
        for term, value in hi_terms(bounds, span_pids):
            sql += f" AND {term}"
            args.extend(value)
        return sql, args

    def _order(self, pids: Mapping[str, Rows], with_hi: bool) -> None:
        terms: list[str] = []
        args: list[Any] = []
        for name, descending in self.sort:
            if name == "_id":
                expr = "r.id"
            elif name == "_lastUpdated":
                expr = "r.updated"
            elif descending and with_hi and name == self.primary_date:
                expr = "d.hi"
            else:
                # Ascending sorts by when a value starts, descending by when it ends. The `+ 0`
                # keeps SQLite's min/max shortcut from walking a whole (pid, lo|hi) index instead
                # of this resource's few rows.
                rows = pids.get(name, NO_ROWS)
                bound = "MAX(s.hi + 0)" if descending else "MIN(s.lo + 0)"
                expr = f"(SELECT {bound} FROM dt s WHERE s.rid = r.rid AND s.pid IN ({marks(len(rows.pids))}))"
                args.extend(rows.pids)
            terms.append(f"{expr} {'DESC' if descending else 'ASC'} NULLS LAST")
        self.order = ", ".join([*terms, "r.rid"])
        self.order_args = args


def unknown_param(resource_type: str, name: str, known: Mapping[str, SearchParam]) -> str:
    supported = ", ".join(sorted([*known, *CONTROL]))
    if "." in name:
        return f"chained search '{name}' is not supported on {resource_type}; supported parameters: {supported}"
    return f"unknown search parameter '{name}' for {resource_type}; supported parameters: {supported}"


def search_pairs(params: SearchParams | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        values = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
        if not isinstance(values, Sequence) or not all(isinstance(v, str | int) for v in values):
            raise InvalidSearch(f"search parameter '{key}' must be a string or a list of strings")
        pairs.extend((str(key), str(v)) for v in values)
    return pairs


def conditional_criteria(query: str, what: str) -> list[tuple[str, str]]:
    """Search criteria of a conditional interaction (`identifier=...`; a `Type?` prefix is tolerated)."""
    pairs = parse_qsl(query.split("?", 1)[-1], keep_blank_values=True)
    if not pairs:
        raise InvalidSearch(f"{what} has no search parameters: {query!r}")
    return pairs


def next_params(pairs: list[tuple[str, str]], offset: int) -> dict[str, Any]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        if key != "_offset":
            grouped.setdefault(key, []).append(value)
    result: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}
    result["_offset"] = str(offset)
    return result


class SearchCache:
    """Compiled searches by (type, parameters). Only for types whose index rows are settled
    (`ParamCatalog.search_rows`), so a compiled query never outlives the parameter ids it uses, and
    not for date searches (a reading's window names its own instant: it never repeats)."""

    def __init__(self, catalog: ParamCatalog, connection: Callable[[], sqlite3.Connection]) -> None:
        self._catalog = catalog
        self._connection = connection  # this thread's, read only to compile a new search
        self._compiled: dict[tuple[str, tuple[tuple[str, str], ...]], Query] = {}

    def compile(self, resource_type: str, pairs: list[tuple[str, str]]) -> Query:
        key = (resource_type, tuple(pairs))
        query = self._compiled.get(key)
        if query is None:
            query = compile_search(resource_type, pairs, self._catalog.rows_of(self._connection(), resource_type))
            if resource_type in self._catalog.search_rows and not query.dated:
                if len(self._compiled) >= _COMPILED_MAX:
                    self._compiled.clear()  # plain and thread-safe; refills with what repeats
                self._compiled[key] = query
        return query

    def match(self, db: sqlite3.Connection, resource_type: str, criteria: list[tuple[str, str]],
              what: str) -> tuple[int, str, int] | None:
        """The one live resource the criteria select as (rid, id, version), None for none;
        PreconditionFailed for several."""
        query = self.compile(resource_type, criteria)
        if query.controls:
            raise InvalidSearch(f"{what}: {_CONDITIONAL_ONLY}, not {', '.join(sorted(query.controls))}")
        rows = db.execute(f"SELECT r.rid, r.id, r.version {query.sql} LIMIT 2", query.args).fetchall()
        if len(rows) > 1:
            shown = "&".join(f"{k}={v}" for k, v in criteria)
            raise PreconditionFailed(f"{what}: criteria '{shown}' match more than one resource")
        return (int(rows[0][0]), str(rows[0][1]), int(rows[0][2])) if rows else None


def compile_search(resource_type: str, pairs: list[tuple[str, str]], pids: Mapping[str, Rows]) -> Query:
    known = params_for(resource_type)
    query = Query(resource_type, primary_date(resource_type))
    clauses: list[Clause] = []
    for key, value in pairs:
        name, _, modifier = key.partition(":")
        if name in CONTROL:
            query.control(name, modifier, value, known)
            continue
        param = known.get(name)
        if param is None:
            raise InvalidSearch(unknown_param(resource_type, name, known))
        if value == "":
            raise InvalidSearch(f"search parameter '{key}' of {resource_type} has an empty value")
        clauses.append(clause(resource_type, name, modifier, value, param, pids.get(name, NO_ROWS)))
    query.assemble(clauses, pids)
    return query


def run(db: sqlite3.Connection, query: Query, pairs: list[tuple[str, str]]) -> SearchResult:
    """One page of a compiled search, with its total and the parameters of the next page."""
    if query.summary_count or query.count == 0:
        return SearchResult([], count_matches(db, query), None)
    # One row past the page: when it is not there, the total is known without a COUNT(*)
    # (most searches here fit one page: a patient's care plans, a window of readings).
    page = db.execute(
        f"SELECT r.rid, r.version {query.sql} ORDER BY {query.order} LIMIT ? OFFSET ?",
        [*query.args, *query.order_args, query.count + 1, query.offset]).fetchall()
    if len(page) <= query.count and (page or query.offset == 0):
        total = query.offset + len(page)
    else:
        total = count_matches(db, query)
        page = page[:query.count]
    if not page:
        return SearchResult([], total, None)
    keys = [vkey(rid, version) for rid, version in page]
    bodies = dict(db.execute(f"SELECT vkey, body FROM versions WHERE vkey IN ({marks(len(keys))})", keys))
    resources = [jsonnum.loads(bodies[k]) for k in keys]
    next_page = None
    if query.offset + query.count < total:
        next_page = next_params(pairs, query.offset + query.count)
    return SearchResult(resources, total, next_page)


def count_matches(db: sqlite3.Connection, query: Query) -> int:
    return int(db.execute(f"SELECT COUNT(*) {query.sql}", query.args).fetchone()[0])
