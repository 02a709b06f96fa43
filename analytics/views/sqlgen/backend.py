"""What the FHIRPath-to-SQL compiler and a backend share: collections, joins, the plan, the backend's steps.

A backend spells each step of a compiled path in its engine's SQL (``struct.py`` for engines with structs and
arrays, ``tsql.py`` for Synapse serverless); ``compiler.py`` decides which steps a path needs, and
``plan.py`` assembles a view's joins, filters and columns from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from analytics.views.sqlgen import model


class SqlGenError(ValueError):
    """A ViewDefinition (or part of one) that the SQL generator does not translate, with where and why."""


@dataclass(frozen=True)
class Coll:
    """A FHIRPath collection as SQL: one value (``many`` false; SQL NULL when empty) or an array of values."""

    many: bool
    type: str | None  # FHIR type of each item; 'boolean' for conditions
    expr: Any = None  # the backend's spelling
    arrow: pa.DataType | None = None  # the lake's Arrow type of one item (struct for a complex type)
    empty: bool = False  # known to be empty (the lake has no such column)
    root: bool = False  # the resource itself
    choice: str | None = None  # a choice element's base name awaiting ofType()
    owner: str | None = None  # the type the pending choice element belongs to


@dataclass
class Join:
    alias: str
    items: Any  # the backend's array expression
    outer: bool


@dataclass
class Plan:
    joins: list[Join] = field(default_factory=list)
    filters: list[Any] = field(default_factory=list)
    columns: list[tuple[str, Any]] = field(default_factory=list)


class Backend(Protocol):
    def root(self) -> Any: ...
    def member(self, c: Coll, el: model.Element) -> Any: ...
    def where(self, c: Coll, test: Callable[[Coll], Coll]) -> Any: ...
    def first(self, c: Coll) -> Any: ...
    def last(self, c: Coll) -> Any: ...
    def exists(self, c: Coll) -> Any: ...
    def compare(self, a: Coll, b: Coll, negate: bool) -> Any: ...
    def logic(self, op: str, a: Coll, b: Coll) -> Any: ...
    def negate(self, a: Coll) -> Any: ...
    def literal(self, value: Any, ftype: str) -> Any: ...
    def null(self) -> Any: ...
    def false(self) -> Any: ...
    def resource_key(self, c: Coll) -> Any: ...
    def reference_key(self, c: Coll, type_name: str | None) -> Any: ...
    def substring(self, c: Coll, start: int, length: int | None) -> Any: ...
    def coalesce(self, a: Coll, b: Coll) -> Any: ...
    def unnest(self, c: Coll, outer: bool) -> tuple[Join, Any]: ...
    def not_null(self, c: Coll) -> Any: ...
    def condition(self, c: Coll) -> Any: ...
    def value(self, c: Coll, sql_type: str, collection: bool) -> Any: ...



__all__ = ["Backend", "Coll", "Join", "Plan", "SqlGenError"]
