"""Running a compiled ViewDefinition over resources: the spec's ``Process(S, N)`` ("Processing Algorithm").

Rows are dicts in the view's column order. Nodes keep fhirpathpy's type information between the levels of
``forEach``/``repeat`` so that ``value.ofType(Quantity)`` still resolves a choice element inside them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from analytics.views.definition import Column, CompiledView, Select, ViewDefinitionError, compile_view
from analytics.views.fhirpath import Expression, FhirPathError


def _evaluate(expr: Expression, focus: Any, env: Mapping[str, Any]) -> list[Any]:
    try:
        return expr.nodes(focus, env)
    except FhirPathError as exc:
        raise ViewDefinitionError(str(exc)) from exc


def _values(expr: Expression, focus: Any, env: Mapping[str, Any]) -> list[Any]:
    try:
        return expr.values(focus, env)
    except FhirPathError as exc:
        raise ViewDefinitionError(str(exc)) from exc


def _column_value(col: Column, focus: Any, env: Mapping[str, Any]) -> Any:
    values = _values(col.path, focus, env)
    if col.collection:
        return values
    if not values:
        return None
    if len(values) > 1:
        raise ViewDefinitionError(
            f"{col.path.where}: column {col.name!r} got {len(values)} values; mark it collection: true "
            "or narrow the path (e.g. with first())"
        )
    return values[0]


def _null_row(sel: Select) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for col in sel.columns:
        row[col.name] = 0 if col.path.text.strip() == "%rowIndex" else ([] if col.collection else None)
    for sub in sel.selects:
        row.update(_null_row(sub))
    if sel.union_all:
        row.update(_null_row(sel.union_all[0]))
    return row


def _foci(sel: Select, node: Any, env: Mapping[str, Any]) -> list[Any] | None:
    """The nodes this select iterates over, or None when it does not iterate (it reads ``node`` itself)."""
    if sel.repeat:
        result: list[Any] = []

        def traverse(current: Any) -> None:
            for path in sel.repeat:
                for child in _evaluate(path, current, env):
                    result.append(child)
                    traverse(child)

        traverse(node)
        return result
    if sel.for_each is not None:
        return _evaluate(sel.for_each, node, env)
    return None


def _process(sel: Select, node: Any, env: dict[str, Any]) -> list[dict[str, Any]]:
    foci = _foci(sel, node, env)
    iterating = foci is not None
    if foci is None:
        foci = [node]
    rows: list[dict[str, Any]] = []
    for index, focus in enumerate(foci):
        local = {**env, "rowIndex": index} if iterating else env
        parts: list[list[dict[str, Any]]] = [[{c.name: _column_value(c, focus, local) for c in sel.columns}]]
        for sub in sel.selects:
            parts.append(_process(sub, focus, local))
        if sel.union_all:
            parts.append([r for branch in sel.union_all for r in _process(branch, focus, local)])
        for combo in itertools.product(*parts):
            row: dict[str, Any] = {}
            for part in combo:
                row.update(part)
            rows.append(row)
    if not foci and sel.or_null:
        rows.append(_null_row(sel))
    return rows


def _passes(view: CompiledView, resource: Mapping[str, Any], env: Mapping[str, Any]) -> bool:
    for expr in view.where:
        result = _values(expr, resource, env)
        if not result:
            return False
        if len(result) > 1 or not isinstance(result[0], bool):
            raise ViewDefinitionError(f"{expr.where}: {expr.text!r} must give one boolean, got {result!r}")
        if not result[0]:
            return False
    return True


def iter_rows(view: CompiledView, resources: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows of ``view`` over ``resources`` (other resource types are skipped), in the view's column order."""
    names = view.column_names()
    base_env = {**view.constants, "rowIndex": 0}
    for resource in resources:
        if resource.get("resourceType") != view.resource:
            continue
        if not _passes(view, resource, base_env):
            continue
        for row in _process(view.root, resource, base_env):
            yield {name: row.get(name) for name in names}


def run_view(view: Mapping[str, Any] | CompiledView, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Compile (if needed) and run ``view``; raise :class:`ViewDefinitionError` for a bad view or row."""
    compiled = view if isinstance(view, CompiledView) else compile_view(view)
    return list(iter_rows(compiled, resources))
