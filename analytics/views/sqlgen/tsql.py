"""Views as T-SQL for Synapse serverless SQL pools over the exported nested Parquet.

Serverless SQL returns a Parquet struct or list column as JSON text in a VARCHAR column ("Query nested types
in Parquet and JSON files", Synapse docs), and T-SQL has no arrays, so this backend cannot be a transpile of
the DuckDB form: a single element is ``JSON_VALUE``/``JSON_QUERY`` on a path, a repeated one a correlated
``OPENJSON`` row source (``[key]`` keeps the array order for ``first()``/``last()``), ``exists()`` an
``EXISTS`` over it. Text comparisons use a binary collation: FHIR codes are case-sensitive and the pool's
default collation is not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from analytics.views.sqlgen import model
from analytics.views.sqlgen.backend import Coll, Join, SqlGenError
from analytics.views.sqlgen.model import PRIMITIVE_NUMBERS

BIN2 = "Latin1_General_100_BIN2"
UTF8 = "Latin1_General_100_BIN2_UTF8"  # the collation Synapse recommends for Parquet strings


@dataclass(frozen=True)
class V:
    """One value: ``sql`` itself (``kind`` 'value': typed; 'text': JSON scalar text) or a JSON path in it."""

    sql: str
    path: str | None = None  # JSON path inside ``sql`` (JSON text) still to apply
    kind: str = "value"


@dataclass(frozen=True)
class P:
    """A condition (T-SQL has no boolean values)."""

    sql: str


@dataclass(frozen=True)
class L:
    """Many values: rows of correlated ``OPENJSON`` sources, the item, its filters and its order."""

    sources: tuple[str, ...]
    item: V
    conds: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def b(name: str) -> str:
    return "[" + name.replace("]", "]]") + "]"


@dataclass
class TsqlBackend:
    columns: dict[str, str] = field(default_factory=dict)  # root columns for OPENROWSET ... WITH (...)

    def __post_init__(self) -> None:
        self._names = itertools.count(1)
        self.columns.setdefault("id", f"VARCHAR(64) COLLATE {UTF8}")
        self.columns.setdefault("meta", "VARCHAR(MAX)")

    # -- helpers --------------------------------------------------------------------------------------
    def text(self, c: Coll | V, ftype: str | None = None) -> str:
        """The SQL of a single value: typed for primitives, JSON text for complex types."""
        v = c.expr if isinstance(c, Coll) else c
        t = c.type if isinstance(c, Coll) else ftype
        if isinstance(v, P):
            return f"CASE WHEN {v.sql} THEN 'true' WHEN NOT {v.sql} THEN 'false' END"
        if not isinstance(v, V):
            raise SqlGenError(f"internal: expected one value, got {v!r}")
        if v.path is None or v.path == "$":
            return v.sql
        primitive = t is not None and (t in model.PRIMITIVE_STRINGS or t in PRIMITIVE_NUMBERS or t == "boolean")
        return f"{'JSON_VALUE' if primitive else 'JSON_QUERY'}({v.sql}, {lit(v.path)})"

    def pred(self, c: Coll) -> str:
        v = c.expr
        if isinstance(v, P):
            return v.sql
        if isinstance(v, V) and v.path is None and v.kind == "value":
            return f"({v.sql} = 1)"
        return f"({self.text(c)} = 'true')"

    def _base(self, v: V) -> tuple[str, str]:
        return (v.sql, v.path) if v.path is not None else (v.sql, "$")

    def _item(self, el: model.Element, alias: str) -> V:
        value = f"{b(alias)}.[value]"
        return V(value, kind="text") if el.primitive else V(value, "$")

    def _from(self, lst: L, extra: tuple[str, ...] = ()) -> str:
        conds = lst.conds + extra
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return f"FROM {' '.join(lst.sources)}{where}"

    # -- the backend protocol -----------------------------------------------------------------------
    def root(self) -> Any:
        return V("[r]")

    def member(self, c: Coll, el: model.Element) -> Any:
        if c.root:
            col = f"[r].{b(el.name)}"
            if el.many or not el.primitive:
                self.columns[el.name] = "VARCHAR(MAX)"
            elif el.type in PRIMITIVE_NUMBERS:
                self.columns[el.name] = "FLOAT"
            elif el.type == "boolean":
                self.columns[el.name] = "BIT"
            else:
                self.columns[el.name] = f"VARCHAR(8000) COLLATE {UTF8}"
            if el.many:
                alias = f"a{next(self._names)}"
                return L((f"OPENJSON({col}) AS {b(alias)}",), self._item(el, alias),
                         keys=(f"CAST({b(alias)}.[key] AS INT)",))
            return V(col) if el.primitive else V(col, "$")
        if not c.many:
            base, path = self._base(c.expr) if isinstance(c.expr, V) else (self.text(c), "$")
            step = f"{path}.{el.name}"
            if el.many:
                alias = f"a{next(self._names)}"
                return L((f"OPENJSON({base}, {lit(step)}) AS {b(alias)}",), self._item(el, alias),
                         keys=(f"CAST({b(alias)}.[key] AS INT)",))
            return V(base, step)
        lst: L = c.expr
        base, path = self._base(lst.item)
        step = f"{path}.{el.name}"
        if el.many:
            alias = f"a{next(self._names)}"
            return L(lst.sources + (f"CROSS APPLY OPENJSON({base}, {lit(step)}) AS {b(alias)}",),
                     self._item(el, alias), lst.conds, lst.keys + (f"CAST({b(alias)}.[key] AS INT)",))
        item = V(base, step)
        return L(lst.sources, item, lst.conds + (f"{self.text(item, el.type)} IS NOT NULL",), lst.keys)

    def where(self, c: Coll, test: Callable[[Coll], Coll]) -> Any:
        if not c.many:
            cond = test(Coll(many=False, type=c.type, expr=c.expr, arrow=c.arrow))
            return V(f"CASE WHEN {self.pred(cond)} THEN {self.text(c)} END")
        lst: L = c.expr
        cond = test(Coll(many=False, type=c.type, expr=lst.item, arrow=c.arrow))
        return L(lst.sources, lst.item, lst.conds + (self.pred(cond),), lst.keys)

    def _top(self, c: Coll, desc: bool) -> V:
        lst: L = c.expr
        order = ", ".join(f"{k}{' DESC' if desc else ''}" for k in lst.keys)
        return V(f"(SELECT TOP 1 {self.text(lst.item, c.type)} {self._from(lst)} ORDER BY {order})")

    def first(self, c: Coll) -> Any:
        return self._top(c, desc=False)

    def last(self, c: Coll) -> Any:
        return self._top(c, desc=True)

    def exists(self, c: Coll) -> Any:
        if c.many:
            return P(f"EXISTS (SELECT 1 {self._from(c.expr)})")
        return P(f"{self.text(c)} IS NOT NULL")

    def compare(self, a: Coll, b_: Coll, negate: bool) -> Any:
        op = "<>" if negate else "="
        if "boolean" in (a.type, b_.type):
            bits = [f"CASE WHEN {self.pred(x)} THEN 1 WHEN NOT {self.pred(x)} THEN 0 END" for x in (a, b_)]
            return P(f"({bits[0]} {op} {bits[1]})")
        if a.type in PRIMITIVE_NUMBERS or b_.type in PRIMITIVE_NUMBERS:
            return P(f"(TRY_CAST({self.text(a)} AS FLOAT) {op} TRY_CAST({self.text(b_)} AS FLOAT))")
        return P(f"({self.text(a)} {op} {self.text(b_)} COLLATE {BIN2})")

    def logic(self, op: str, a: Coll, b_: Coll) -> Any:
        return P(f"({self.pred(a)} {op.upper()} {self.pred(b_)})")

    def negate(self, a: Coll) -> Any:
        return P(f"(NOT {self.pred(a)})")

    def literal(self, value: Any, ftype: str) -> Any:
        if isinstance(value, bool):
            return P("(1 = 1)" if value else "(1 = 0)")
        if isinstance(value, (int, float)):
            return V(repr(value))
        return V(lit(str(value)))

    def null(self) -> Any:
        return V("NULL")

    def false(self) -> Any:
        return P("(1 = 0)")

    def resource_key(self, c: Coll) -> Any:
        return V("[r].[id]")

    def reference_key(self, c: Coll, type_name: str | None) -> Any:
        # As the runner: [base/]Type/id, a /_history/v part dropped; the key is the id (fhirpath.py). T-SQL has
        # no regular expressions, so the reference is read backwards: the id is the text after the last '/'.
        ref = self.text(c)
        hist = f"CHARINDEX('/_history/', {ref})"
        bare = f"CASE WHEN {hist} > 0 THEN LEFT({ref}, {hist} - 1) ELSE {ref} END"
        rev = f"REVERSE({bare})"
        slash = f"CHARINDEX('/', {rev})"
        key = f"REVERSE(LEFT({rev}, {slash} - 1))"
        if not type_name:
            return V(f"CASE WHEN {slash} > 0 THEN {key} END")
        rest = f"SUBSTRING({rev}, {slash} + 1, 8000)"
        typed = f"LEFT({rest} + '/', {len(type_name) + 1}) = {lit(type_name[::-1] + '/')} COLLATE {BIN2}"
        return V(f"CASE WHEN {slash} > 0 THEN CASE WHEN {typed} THEN {key} END END")

    def substring(self, c: Coll, start: int, length: int | None) -> Any:
        s = self.text(c)
        return V(f"CASE WHEN LEN({s}) > {start} THEN SUBSTRING({s}, {start + 1}, {length or 8000}) END")

    def coalesce(self, a: Coll, b_: Coll) -> Any:
        return V(f"COALESCE({self.text(a)}, {self.text(b_)})")

    def unnest(self, c: Coll, outer: bool) -> tuple[Join, Any]:
        lst: L = c.expr
        alias = f"f{next(self._names)}"
        clause = (f"{'OUTER' if outer else 'CROSS'} APPLY (SELECT {self.text(lst.item, c.type)} AS [item] "
                  f"{self._from(lst)}) AS {b(alias)}")
        return Join(alias=alias, items=clause, outer=outer), V(f"{b(alias)}.[item]")

    def condition(self, c: Coll) -> Any:
        return self.pred(c)

    def not_null(self, c: Coll) -> Any:
        return P(f"{self.text(c)} IS NOT NULL")

    def value(self, c: Coll, sql_type: str, collection: bool) -> Any:
        if collection:
            raise SqlGenError("collection columns are not translated for Synapse (T-SQL has no arrays)")
        if sql_type == "boolean":
            v = c.expr
            if isinstance(v, P):
                return f"CASE WHEN {v.sql} THEN CAST(1 AS BIT) WHEN NOT {v.sql} THEN CAST(0 AS BIT) END"
            if isinstance(v, V) and v.path is None and v.kind == "value":
                return f"CAST({v.sql} AS BIT)"
            t = self.text(c)
            return f"CASE {t} WHEN 'true' THEN CAST(1 AS BIT) WHEN 'false' THEN CAST(0 AS BIT) END"
        t = self.text(c)
        if sql_type == "decimal":
            return f"TRY_CAST({t} AS FLOAT)"
        if sql_type == "integer":
            return f"CAST(TRY_CAST({t} AS FLOAT) AS BIGINT)"
        return f"CAST({t} AS VARCHAR(8000))"
