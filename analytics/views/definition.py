"""Checking and compiling a ViewDefinition (SQL-on-FHIR v2, "ViewDefinition" and "Validation" pages).

Every problem names where it is (``select[1].column[0].path``) and why, so that a bad view fails before
it touches data, and a data-dependent problem (a ``where`` that is not boolean, a column that yields many
values without ``collection: true``) fails with the same kind of error while it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from analytics.views.fhirpath import Expression, FhirPathError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CONSTANT_KEYS = (
    "valueBase64Binary", "valueBoolean", "valueCanonical", "valueCode", "valueDate", "valueDateTime",
    "valueDecimal", "valueId", "valueInstant", "valueInteger", "valueInteger64", "valueOid",
    "valuePositiveInt", "valueString", "valueTime", "valueUnsignedInt", "valueUri", "valueUrl", "valueUuid",
)  # fmt: skip


class ViewDefinitionError(ValueError):
    """A ViewDefinition that cannot run, or a row it cannot produce, with the place and the reason."""


@dataclass
class Column:
    name: str
    path: Expression
    type: str | None
    collection: bool


@dataclass
class Select:
    where: str
    columns: list[Column] = field(default_factory=list)
    selects: list[Select] = field(default_factory=list)
    union_all: list[Select] = field(default_factory=list)
    for_each: Expression | None = None
    or_null: bool = False
    repeat: list[Expression] = field(default_factory=list)

    def column_names(self) -> list[str]:
        """The row's columns in order: own columns, nested selects, then the unionAll branches' shared set."""
        names = [c.name for c in self.columns]
        for sub in self.selects:
            names.extend(sub.column_names())
        if self.union_all:
            names.extend(self.union_all[0].column_names())
        return names


@dataclass
class CompiledView:
    resource: str
    root: Select
    where: list[Expression]
    constants: dict[str, Any]
    name: str | None = None

    def column_names(self) -> list[str]:
        return self.root.column_names()


def _fail(where: str, why: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"{where}: {why}")


def _expr(value: Any, where: str) -> Expression:
    if not isinstance(value, str):
        raise _fail(where, f"must be a FHIRPath string, got {type(value).__name__} {value!r}")
    try:
        return Expression(value, where)
    except FhirPathError as exc:
        raise ViewDefinitionError(str(exc)) from exc


def _constants(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise _fail("constant", "must be a list")
    out: dict[str, Any] = {}
    for i, item in enumerate(raw):
        where = f"constant[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not _NAME.match(item["name"]):
            raise _fail(where, "needs a name of letters, digits and _ starting with a letter")
        values = [k for k in item if k.startswith("value")]
        if len(values) != 1 or values[0] not in _CONSTANT_KEYS:
            raise _fail(where, f"needs exactly one value[x] of a primitive type, got {values or 'none'}")
        if item["name"] in out:
            raise _fail(where, f"constant {item['name']!r} is defined twice")
        out[item["name"]] = item[values[0]]
    return out


def _select(raw: Any, where: str) -> Select:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object")
    sel = Select(where=where)
    iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in raw]
    if len(iterators) > 1:
        raise _fail(where, f"can have only one of forEach, forEachOrNull and repeat, got {iterators}")
    if "forEach" in raw:
        sel.for_each = _expr(raw["forEach"], f"{where}.forEach")
    if "forEachOrNull" in raw:
        sel.for_each = _expr(raw["forEachOrNull"], f"{where}.forEachOrNull")
        sel.or_null = True
    if "repeat" in raw:
        paths = raw["repeat"]
        if not isinstance(paths, list) or not paths:
            raise _fail(f"{where}.repeat", "must be a non-empty list of FHIRPath strings")
        sel.repeat = [_expr(p, f"{where}.repeat[{i}]") for i, p in enumerate(paths)]
    for i, col in enumerate(_list(raw, "column", where)):
        sel.columns.append(_column(col, f"{where}.column[{i}]"))
    sel.selects = [_select(s, f"{where}.select[{i}]") for i, s in enumerate(_list(raw, "select", where))]
    sel.union_all = [_select(s, f"{where}.unionAll[{i}]") for i, s in enumerate(_list(raw, "unionAll", where))]
    if sel.union_all:
        first = sel.union_all[0].column_names()
        for branch in sel.union_all[1:]:
            if branch.column_names() != first:
                raise _fail(
                    branch.where,
                    f"unionAll branches must have the same columns in the same order: {first} vs "
                    f"{branch.column_names()}",
                )
    if not (sel.columns or sel.selects or sel.union_all):
        raise _fail(where, "needs at least one column, select or unionAll")
    return sel


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise _fail(f"{where}.{key}", f"must be a list, got {type(value).__name__}")
    return value


def _column(raw: Any, where: str) -> Column:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(f"{where}.name", f"{name!r} is not a valid column name (letters, digits, _; a letter first)")
    collection = raw.get("collection", False)
    if not isinstance(collection, bool):
        raise _fail(f"{where}.collection", "must be true or false")
    ctype = raw.get("type")
    if ctype is not None and not isinstance(ctype, str):
        raise _fail(f"{where}.type", "must be a FHIR type name")
    return Column(name=name, path=_expr(raw.get("path"), f"{where}.path"), type=ctype, collection=collection)


def compile_view(view: Any) -> CompiledView:
    """Check ``view`` and compile its expressions; raise :class:`ViewDefinitionError` on the first problem."""
    if not isinstance(view, dict) or not view:
        raise _fail("ViewDefinition", "must be a non-empty JSON object")
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        raise _fail("resource", "is required: the FHIR resource type the view reads")
    raw_select = view.get("select")
    if not isinstance(raw_select, list) or not raw_select:
        raise _fail("select", "is required: a non-empty list of selects")
    constants = _constants(view.get("constant"))
    root = Select(where="ViewDefinition", selects=[_select(s, f"select[{i}]") for i, s in enumerate(raw_select)])
    names = root.column_names()
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail("select", f"column names must be unique in a view, repeated: {dupes}")
    where = []
    for i, item in enumerate(view.get("where") or []):
        if not isinstance(item, dict):
            raise _fail(f"where[{i}]", "must be an object with a path")
        where.append(_expr(item.get("path"), f"where[{i}].path"))
    name = view.get("name") if isinstance(view.get("name"), str) else None
    return CompiledView(resource=resource, root=root, where=where, constants=constants, name=name)
