"""FHIRPath for ViewDefinitions: fhirpathpy plus the functions SQL-on-FHIR v2 adds.

fhirpathpy (MIT, beda.software) evaluates the FHIRPath; the ViewDefinition spec requires two functions it
does not know, ``getResourceKey()`` and ``getReferenceKey([type])``, and the Shareable profile asks for
``lowBoundary()``/``highBoundary()`` (FHIRPath 3.0 §5.8), which it lacks too. They are registered through
fhirpathpy's ``userInvocationTable`` so that the engine's own parser and evaluator stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast

from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants as _engine_constants
from fhirpathpy.engine.invocations.strings import join as _engine_join
from fhirpathpy.engine.nodes import FP_Quantity, FP_Type, ResourceNode, TypeInfo
from fhirpathpy.engine.util import arraify
from fhirpathpy.models import models
from fhirpathpy.parser import parse

from analytics.views.boundary import high_boundary, low_boundary
from analytics.views.fastpath import Unsupported, compile_fast

_MODEL = models["r4"]


class FhirPathError(ValueError):
    """An expression that does not parse, or that fails while it is evaluated."""


def _data(item: Any) -> Any:
    return item.data if isinstance(item, ResourceNode) else item


def _resource_key(ctx: Any, inputs: list[Any]) -> list[Any]:
    out = []
    for item in inputs:
        data = _data(item)
        if isinstance(data, Mapping) and data.get("id") is not None:
            # The key only has to be unique per resource type and to match getReferenceKey(): the id is.
            out.append(data["id"])
    return out


def _reference_key(ctx: Any, inputs: list[Any], type_spec: Any = None) -> list[Any]:
    wanted = getattr(type_spec, "name", None) if type_spec is not None else None
    out = []
    for item in inputs:
        data = _data(item)
        ref = data.get("reference") if isinstance(data, Mapping) else None
        if not isinstance(ref, str) or "/" not in ref:
            continue
        parts = ref.split("/")
        # A versioned reference (Type/id/_history/v) keys on the resource, not the version.
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        rtype, rid = parts[-2], parts[-1]
        if wanted and rtype != wanted:
            continue
        out.append(rid)
    return out


def _boundary(fn: Callable[[Any, int | None], Any]) -> Callable[..., list[Any]]:
    def invoke(ctx: Any, inputs: list[Any], precision: Any = None) -> list[Any]:
        if isinstance(precision, list):
            precision = precision[0] if precision else None
        out = []
        for item in inputs:
            value = fn(item, precision)
            if value is not None:
                out.append(value)
        return out

    return invoke


def _join(ctx: Any, coll: list[Any], separator: Any = "") -> Any:
    # join() of an empty collection is the empty string (FHIRPath 3.0 join(); the suite's "string join").
    if not coll:
        return ""
    return _engine_join(ctx, coll, "" if separator in (None, []) else separator)


_EXTRA_FUNCTIONS: dict[str, dict[str, Any]] = {
    "getResourceKey": {"fn": _resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "lowBoundary": {"fn": _boundary(low_boundary), "arity": {0: [], 1: ["Integer"]}},
    "highBoundary": {"fn": _boundary(high_boundary), "arity": {0: [], 1: ["Integer"]}},
}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
}


def _install_extra_functions() -> None:
    # fhirpathpy's userInvocationTable hands functions plain data (it unwraps the nodes) and would lose the
    # type of a node (date vs dateTime vs decimal) that the boundary functions need, so the functions join
    # the engine's own registry, which passes nodes through.
    from fhirpathpy.engine import invocations

    registry = invocations.invocation_registry
    for name, entry in _EXTRA_FUNCTIONS.items():
        registry.setdefault(name, entry)
    registry.update(_OVERRIDES)


_install_extra_functions()
# fhirpathpy ships inline types (py.typed) but declares `TypeInfo.model = None` unannotated, so mypy takes the
# attribute to be None forever; the engine reads a model dict from it (`TypeInfo.model.get("type2Parent")`
# in fhirpathpy/engine/nodes.py; its types.py assigns one). The cast is for that declaration only.
cast(Any, TypeInfo).model = TypeInfo.model or _MODEL


class Expression:
    """One compiled FHIRPath expression, evaluated to a list of nodes (type information kept)."""

    def __init__(self, text: str, where: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise FhirPathError(f"{where}: a FHIRPath expression must be a non-empty string, got {text!r}")
        self.text = text
        self.where = where
        try:
            self._parsed = parse(text)
        except Exception as exc:  # the ANTLR parser raises plain Exceptions
            raise FhirPathError(f"{where}: {text!r} is not valid FHIRPath ({exc})") from exc
        self._fast = compile_fast(text)

    def values(self, focus: Any, variables: Mapping[str, Any]) -> list[Any]:
        """The result as plain JSON values: by the fast evaluator when it covers the expression."""
        if self._fast is not None:
            try:
                return self._fast(_data(focus), variables)
            except Unsupported:
                pass
        return [to_json(v) for v in self.nodes(focus, variables)]

    def nodes(self, focus: Any, variables: Mapping[str, Any]) -> list[Any]:
        """Evaluate on ``focus`` (a resource dict or a node from an earlier evaluation)."""
        # As fhirpathpy.apply_parsed_path, but with $this bound to the focus: a column path "$this" inside
        # a forEach names the iterated element itself (SQL-on-FHIR "forEach" examples).
        _engine_constants.reset()
        root = arraify(focus)
        ctx = {
            "dataRoot": root,
            "$this": root,
            "vars": {"context": focus, "ucum": "http://unitsofmeasure.org", **variables},
            "model": _MODEL,
            "userInvocationTable": {},
        }
        try:
            result = do_eval(ctx, root, self._parsed["children"][0])
        except FhirPathError:
            raise
        except Exception as exc:
            raise FhirPathError(f"{self.where}: evaluating {self.text!r} failed ({exc})") from exc
        return [item for item in arraify(result) if not _extension_only(item)]


def _extension_only(item: Any) -> bool:
    # fhirpathpy represents a primitive's "_field" extension part as a node holding only "extension".
    return isinstance(item, ResourceNode) and isinstance(item.data, Mapping) and list(item.data) == ["extension"]


def to_json(value: Any) -> Any:
    """A FHIRPath result item as plain JSON (what a view row holds)."""
    value = _data(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, FP_Quantity):
        return {"value": to_json(value.value), "unit": value.unit}
    if isinstance(value, FP_Type):
        return str(value)
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def type_name(value: Any) -> str | None:
    """The FHIR type a node carries, if the model told it (``dateTime``, ``Quantity``, ...)."""
    return value.path if isinstance(value, ResourceNode) and isinstance(value.path, str) else None
