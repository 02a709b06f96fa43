"""Views as SQL for engines that read nested Parquet as structs and arrays: DuckDB and Spark SQL.

Expressions are written once, in DuckDB's SQL, and turned into Spark SQL by sqlglot (``transpile``), which
knows the differences that matter here: ``list_filter``/``list_transform`` vs ``filter``/``transform``,
DuckDB's 1-based ``l[1]`` vs Spark's ``TRY_ELEMENT_AT(l, 1)``, ``array_length`` vs ``size``, ``regexp_matches`` vs
``RLIKE``, double-quoted vs back-quoted names. The few clauses sqlglot does not carry over faithfully (a
lateral unnest that must keep rows, ``LEFT JOIN LATERAL`` → ``LATERAL VIEW OUTER explode``; the file
sources) are written here per engine.

A FHIRPath collection is a scalar (NULL when empty) or an array whose items are never NULL: every step that
could leave a NULL item filters it out, so ``first()`` is the first *value*, as in FHIRPath.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import sqlglot
from sqlglot import exp

from analytics.views.sqlgen import model
from analytics.views.sqlgen.backend import Coll, Join

_DUCK_TYPES = {"decimal": "DOUBLE", "integer": "BIGINT", "boolean": "BOOLEAN", "string": "VARCHAR"}


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class StructBackend:
    """FHIRPath steps spelled in DuckDB SQL over the resource row ``r``."""

    def __init__(self) -> None:
        self._names = itertools.count(1)

    def _var(self) -> str:
        return f"x{next(self._names)}"

    def root(self) -> Any:
        return q("r")

    def member(self, c: Coll, el: model.Element) -> Any:
        field = q(el.name)
        if not c.many:
            return f"{_deref(c.expr)}.{field}"
        x = self._var()
        if el.many:
            return (f"flatten(list_transform(list_filter({c.expr}, lambda {x}: {x}.{field} IS NOT NULL), "
                    f"lambda {x}: {x}.{field}))")
        return f"list_filter(list_transform({c.expr}, lambda {x}: {x}.{field}), lambda {x}: {x} IS NOT NULL)"

    def where(self, c: Coll, test: Callable[[Coll], Coll]) -> Any:
        if not c.many:
            cond = test(Coll(many=False, type=c.type, expr=c.expr, arrow=c.arrow))
            return f"CASE WHEN {cond.expr} THEN {c.expr} END"
        x = self._var()
        cond = test(Coll(many=False, type=c.type, expr=x, arrow=c.arrow))
        return f"list_filter({c.expr}, lambda {x}: {cond.expr})"

    def first(self, c: Coll) -> Any:
        return f"({c.expr})[1]"

    def last(self, c: Coll) -> Any:
        return f"({c.expr})[-1]"

    def exists(self, c: Coll) -> Any:
        if c.many:
            return f"(coalesce(array_length({c.expr}), 0) > 0)"
        return f"({c.expr} IS NOT NULL)"

    def compare(self, a: Coll, b: Coll, negate: bool) -> Any:
        return f"({a.expr} {'<>' if negate else '='} {b.expr})"

    def logic(self, op: str, a: Coll, b: Coll) -> Any:
        return f"({a.expr} {op.upper()} {b.expr})"

    def negate(self, a: Coll) -> Any:
        return f"(NOT {a.expr})"

    def literal(self, value: Any, ftype: str) -> Any:
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, (int, float)):
            return repr(value)
        return lit(str(value))

    def null(self) -> Any:
        return "NULL"

    def false(self) -> Any:
        return "FALSE"

    def resource_key(self, c: Coll) -> Any:
        return f"{q('r')}.{q('id')}"

    def reference_key(self, c: Coll, type_name: str | None) -> Any:
        # As the runner: [base/]Type/id, a trailing /_history/v dropped; the key is the id (fhirpath.py).
        ref = f"regexp_replace({c.expr}, '/_history/[^/]*$', '')"
        test = f"regexp_matches({ref}, '(^|/){type_name}/[^/]*$')" if type_name else f"contains({ref}, '/')"
        return f"CASE WHEN {test} THEN regexp_extract({ref}, '[^/]*$', 0) END"

    def substring(self, c: Coll, start: int, length: int | None) -> Any:
        args = f"{start + 1}, {length}" if length is not None else f"{start + 1}"
        # FHIRPath substring(): a start outside the string gives empty, not ''.
        return f"CASE WHEN length({c.expr}) > {start} THEN substring({c.expr}, {args}) END"

    def coalesce(self, a: Coll, b: Coll) -> Any:
        return f"coalesce({a.expr}, {b.expr})"

    def unnest(self, c: Coll, outer: bool) -> tuple[Join, Any]:
        alias = f"f{next(self._names)}"
        return Join(alias=alias, items=c.expr, outer=outer), f"{q(alias)}.{q('item')}"

    def condition(self, c: Coll) -> Any:
        return c.expr

    def not_null(self, c: Coll) -> Any:
        return f"({c.expr} IS NOT NULL)"

    def value(self, c: Coll, sql_type: str, collection: bool) -> Any:
        t = _DUCK_TYPES[sql_type]
        if not collection:
            return f"CAST({c.expr} AS {t})"
        x = self._var()
        items = c.expr if c.many else f"list_filter([{c.expr}], lambda {x}: {x} IS NOT NULL)"
        return f"coalesce(list_transform({items}, lambda {x}: CAST({x} AS {t})), [])"


def _deref(expr: str) -> str:
    simple = all((part.startswith('"') and part.endswith('"')) or part.isidentifier() for part in expr.split("."))
    return expr if simple else f"({expr})"


def _safe_index(node: exp.Expression) -> exp.Expression:
    # Spark's arr[i] fails on a missing item when spark.sql.ansi.enabled is on (Spark 4's default); FHIRPath's
    # first() of nothing is empty. TRY_ELEMENT_AT (1-based, negative from the end) gives NULL instead; sqlglot
    # models it as a "safe" 1-based bracket, while DuckDB's parser left a 0-based one.
    if not isinstance(node, exp.Bracket) or node.args.get("safe") or len(node.expressions) != 1:
        return node
    index = node.expressions[0]
    if isinstance(index, exp.Literal) and index.is_int:
        shifted: exp.Expression = exp.Literal.number(int(index.this) + 1)
    elif isinstance(index, exp.Neg) and isinstance(index.this, exp.Literal) and index.this.is_int:
        shifted = exp.Literal.number(1 - int(index.this.this))
    else:
        shifted = exp.Add(this=exp.Paren(this=index), expression=exp.Literal.number(1))
    return exp.Bracket(this=node.this, expressions=[shifted], offset=1, safe=True)


def to_spark(expr: str) -> str:
    """One DuckDB expression as Spark SQL (sqlglot), indexing arrays with TRY_ELEMENT_AT."""
    tree = sqlglot.parse_one(f"SELECT {expr}", read="duckdb").transform(_safe_index)
    out = tree.sql(dialect="spark")
    if not out.startswith("SELECT "):
        raise AssertionError(f"sqlglot turned an expression into {out!r}")
    return out[len("SELECT "):]
