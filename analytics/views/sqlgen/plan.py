"""A ViewDefinition as a plan: its joins (``forEach``), filters (``where``) and columns in a backend's SQL."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pyarrow as pa

from analytics.views.definition import CompiledView, Select
from analytics.views.sqlgen.backend import Backend, Coll, Plan, SqlGenError
from analytics.views.sqlgen.compiler import Compiler
from analytics.views.sqlgen.model import PRIMITIVE_NUMBERS, PRIMITIVE_STRINGS

_TEXT = PRIMITIVE_STRINGS


def _sql_type(ctype: str | None, coll: Coll) -> str:
    t = ctype or coll.type or "string"
    if t == "decimal":
        return "decimal"
    if t in PRIMITIVE_NUMBERS:
        return "integer"
    if t == "boolean":
        return "boolean"
    return "string"


def _condition(backend: Backend, expr: Any) -> Any:
    return backend.condition(Coll(many=False, type="boolean", expr=expr))


def plan_view(view: CompiledView, backend: Backend, schema: pa.Schema | None = None) -> Plan:
    """The joins, filters and columns of ``view`` in the backend's spelling."""
    c = Compiler(backend, view.resource, view.constants, schema)
    root = c.root()
    plan = Plan()
    for expr in view.where:
        cond = c.compile(expr.text, root, expr.where)
        if cond.many or cond.type != "boolean":
            raise c.fail("a view's where must give one boolean")
        plan.filters.append(_condition(backend, backend.false() if cond.empty else cond.expr))

    def visit(sel: Select, focus: Coll) -> None:
        if sel.repeat:
            raise SqlGenError(f"{sel.where}.repeat: repeat is not translated to SQL")
        if sel.union_all:
            raise SqlGenError(f"{sel.where}.unionAll: unionAll is not translated to SQL")
        if sel.for_each is not None:
            key = "forEachOrNull" if sel.or_null else "forEach"
            items = c.compile(sel.for_each.text, focus, f"{sel.where}.{key}")
            if items.type is None or items.type in _TEXT or items.type in PRIMITIVE_NUMBERS:
                raise c.fail("forEach over primitive values is not translated")
            if items.empty:
                if not sel.or_null:
                    plan.filters.append(_condition(backend, backend.false()))
                focus = replace(items, many=False)
            elif items.many:
                join, item = backend.unnest(items, sel.or_null)
                plan.joins.append(join)
                focus = Coll(many=False, type=items.type, expr=item, arrow=items.arrow)
            else:
                if not sel.or_null:
                    plan.filters.append(_condition(backend, backend.not_null(items)))
                focus = items
        for col in sel.columns:
            where = col.path.where
            if col.path.text.strip() == "%rowIndex":
                raise SqlGenError(f"{where}: %rowIndex is not translated to SQL")
            value = c.compile(col.path.text, focus, where)
            if value.type is not None and not (value.type in _TEXT or value.type in PRIMITIVE_NUMBERS
                                               or value.type == "boolean"):
                raise c.fail(f"the column gives {value.type} values; SQL columns here hold primitives only")
            if value.many and not col.collection:
                raise c.fail("the path can give many values: add first() or mark the column collection: true")
            try:
                plan.columns.append((col.name, backend.value(value, _sql_type(col.type, value), col.collection)))
            except SqlGenError as exc:
                raise SqlGenError(f"{where}: {exc}") from exc
        for sub in sel.selects:
            visit(sub, focus)

    visit(view.root, root)
    return plan



__all__ = ["plan_view"]
