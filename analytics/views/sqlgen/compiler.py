"""FHIRPath of a ViewDefinition to SQL expressions, through a backend per data model.

The compiler walks fhirpathpy's parse tree (so the grammar is FHIRPath's own), tracks for every
sub-expression whether it is one value or many and which FHIR type it holds (``model.py``), and asks a backend
to spell each step: ``struct.py`` for engines with structs and arrays (DuckDB, and Spark through sqlglot),
``tsql.py`` for Synapse serverless, which sees nested Parquet as JSON text. The subset is what the shipped RPM
views use, kept generic: member access, choice elements with ``ofType``, ``where``, ``exists``, ``first``,
``last``, ``=``/``!=``, ``and``/``or``/``not()``, ``|`` under ``first()``/``exists()``, literals, constants,
``$this``, ``toString()`` of text, ``substring``, ``getResourceKey()`` and ``getReferenceKey([Type])``.
Everything else fails with :class:`SqlGenError` naming the place and the construct, rather than giving SQL
whose rows could differ from the runner's. ``plan.py`` compiles a whole ViewDefinition with it; the
collections and the backend protocol are ``backend.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pyarrow as pa
from fhirpathpy.parser import parse

from analytics.views.sqlgen import model
from analytics.views.sqlgen.backend import Backend, Coll, SqlGenError
from analytics.views.sqlgen.model import PRIMITIVE_NUMBERS, PRIMITIVE_STRINGS, ModelError

_TEXT = PRIMITIVE_STRINGS
_CONSTANT_TYPES = {bool: "boolean", int: "integer", float: "decimal", str: "string"}


def _identifier(node: Mapping[str, Any]) -> str:
    text = node["terminalNodeText"][0] if node.get("terminalNodeText") else node.get("text", "")
    return text[1:-1] if text.startswith("`") and text.endswith("`") else text


class _Compiler:
    def __init__(self, backend: Backend, resource: str, constants: Mapping[str, Any],
                 schema: pa.Schema | None) -> None:
        self.b = backend
        self.resource = resource
        self.constants = constants
        self.schema = schema
        self.where = ""
        self.text = ""

    # -- entry points -------------------------------------------------------------------------------
    def root(self) -> Coll:
        arrow = model.schema_struct(self.schema) if self.schema is not None else None
        return Coll(many=False, type=self.resource, expr=self.b.root(), arrow=arrow, root=True)

    def compile(self, text: str, focus: Coll, where: str) -> Coll:
        self.where, self.text = where, text
        try:
            tree = parse(text)["children"][0]
        except Exception as exc:  # the ANTLR parser raises plain Exceptions
            raise self.fail(f"is not valid FHIRPath ({exc})") from exc
        result = self.expr(tree, focus)
        if result.choice is not None:
            raise self.fail(f"the choice element {result.choice!r} needs ofType(<type>) to be translated")
        return result

    def fail(self, why: str) -> SqlGenError:
        return SqlGenError(f"{self.where}: {self.text!r}: {why}")

    # -- the tree -----------------------------------------------------------------------------------
    def expr(self, node: Mapping[str, Any], focus: Coll) -> Coll:
        kind = node["type"]
        children = node.get("children", [])
        if kind == "TermExpression":
            return self.term(children[0], focus)
        if kind == "InvocationExpression":
            base = self.expr(children[0], focus)
            return self.invoke(children[1], base, focus)
        if kind == "EqualityExpression":
            op = node["terminalNodeText"][0]
            if op not in ("=", "!="):
                raise self.fail(f"the operator {op!r} is not translated (only = and !=)")
            return self.compare(self.expr(children[0], focus), self.expr(children[1], focus), op == "!=")
        if kind in ("AndExpression", "OrExpression"):
            op = node["terminalNodeText"][0]
            if op not in ("and", "or"):
                raise self.fail(f"the operator {op!r} is not translated (only and, or)")
            # An empty operand is SQL's NULL: FHIRPath's and/or over empty follow the same three-valued tables.
            a, b = (self.boolean(self.expr(c, focus)) for c in children)
            return Coll(many=False, type="boolean", expr=self.b.logic(op, a, b))
        if kind == "UnionExpression":
            raise self.fail("'|' is translated only directly under first() or exists()")
        raise self.fail(f"{kind} is not translated")

    def term(self, node: Mapping[str, Any], focus: Coll) -> Coll:
        kind = node["type"]
        children = node.get("children", [])
        if kind == "InvocationTerm":
            return self.invoke(children[0], focus, focus)
        if kind == "ParenthesizedTerm":
            return self.expr(children[0], focus)
        if kind == "LiteralTerm":
            return self.literal(children[0])
        if kind == "ExternalConstantTerm":
            name = _identifier(children[0]["children"][0])
            if name not in self.constants:
                raise self.fail(f"%{name} is not a constant of the view (%rowIndex and environment variables "
                                "are not translated)")
            value = self.constants[name]
            return Coll(many=False, type=_CONSTANT_TYPES.get(type(value), "string"),
                        expr=self.b.literal(value, _CONSTANT_TYPES.get(type(value), "string")))
        raise self.fail(f"{kind} is not translated")

    def literal(self, node: Mapping[str, Any]) -> Coll:
        kind, text = node["type"], node.get("text", "")
        if kind == "StringLiteral":
            value = text[1:-1]
            if "\\" in value:
                raise self.fail("string literals with escapes are not translated")
            return Coll(many=False, type="string", expr=self.b.literal(value, "string"))
        if kind == "NumberLiteral":
            number: int | float = float(text) if "." in text else int(text)
            ftype = "decimal" if isinstance(number, float) else "integer"
            return Coll(many=False, type=ftype, expr=self.b.literal(number, ftype))
        if kind == "BooleanLiteral":
            return Coll(many=False, type="boolean", expr=self.b.literal(text == "true", "boolean"))
        raise self.fail(f"the literal {text!r} ({kind}) is not translated")

    def invoke(self, node: Mapping[str, Any], base: Coll, focus: Coll) -> Coll:
        kind = node["type"]
        if kind == "MemberInvocation":
            return self.member(base, _identifier(node["children"][0]))
        if kind == "ThisInvocation":
            return focus
        if kind == "FunctionInvocation":
            fn = node["children"][0]
            name = _identifier(fn["children"][0])
            params = fn["children"][1]["children"] if len(fn["children"]) > 1 else []
            return self.function(name, params, base)
        raise self.fail(f"{kind} is not translated")

    # -- steps --------------------------------------------------------------------------------------
    def member(self, base: Coll, name: str) -> Coll:
        if base.choice is not None:
            raise self.fail(f"the choice element {base.choice!r} needs ofType(<type>) before .{name}")
        if base.type is None or base.type == "boolean" or base.type in _TEXT or base.type in PRIMITIVE_NUMBERS:
            raise self.fail(f".{name} on a primitive value is not translated")
        if name[:1].isupper():
            if base.root and name == self.resource:
                return base
            raise self.fail(f"{name!r}: a type name as a path step is not translated")
        if model.choice_types(base.type, name):
            return replace(base, choice=name, owner=base.type)
        return self.step(base, name)

    def step(self, base: Coll, name: str) -> Coll:
        try:
            el = model.element(base.type or "", name, base.arrow, self.schema is not None)
        except ModelError as exc:
            raise self.fail(str(exc)) from exc
        many = base.many or el.many
        if base.empty or el.absent:
            return Coll(many=many, type=el.type, empty=True, expr=self.b.null())
        expr = self.b.member(base, el)
        return Coll(many=many, type=el.type, expr=expr, arrow=model.item_type(el.arrow))

    def boolean(self, c: Coll) -> Coll:
        if c.many or c.type != "boolean":
            raise self.fail(f"expected one boolean, got {'many values' if c.many else c.type}")
        return c

    def compare(self, a: Coll, b: Coll, negate: bool) -> Coll:
        for side in (a, b):
            if side.many:
                raise self.fail("equality of repeated elements is not translated; narrow with first() or where()")
            if side.type in ("date", "dateTime", "instant", "time"):
                raise self.fail("equality of dates follows FHIRPath precision rules and is not translated")
            if side.type is not None and not (side.type in _TEXT or side.type in PRIMITIVE_NUMBERS
                                              or side.type == "boolean"):
                raise self.fail(f"equality of {side.type} values is not translated")
        if a.empty or b.empty:
            return Coll(many=False, type="boolean", empty=True, expr=self.b.null())
        return Coll(many=False, type="boolean", expr=self.b.compare(a, b, negate))

    def function(self, name: str, params: list[Mapping[str, Any]], base: Coll) -> Coll:
        if name == "ofType":
            return self.of_type(params, base)
        if base.choice is not None:
            raise self.fail(f"the choice element {base.choice!r} needs ofType(<type>) before {name}()")
        if name in ("first", "last") and not params:
            if base.empty or not base.many:
                return replace(base, many=False)
            return replace(base, many=False, expr=(self.b.first if name == "first" else self.b.last)(base))
        if name == "exists":
            c = self.filter(params[0], base) if params else base
            if len(params) > 1:
                raise self.fail("exists() takes at most one argument")
            if c.empty:
                return Coll(many=False, type="boolean", expr=self.b.false())
            return Coll(many=False, type="boolean", expr=self.b.exists(c))
        if name == "where" and len(params) == 1:
            return self.filter(params[0], base)
        if name == "not" and not params:
            c = self.boolean(base)
            return c if c.empty else Coll(many=False, type="boolean", expr=self.b.negate(c))
        if name == "getResourceKey" and not params:
            if not base.root:
                raise self.fail("getResourceKey() is translated on the resource only")
            return Coll(many=False, type="id", expr=self.b.resource_key(base))
        if name == "getReferenceKey" and len(params) <= 1:
            return self.reference_key(params, base)
        if name == "toString" and not params:
            if base.many or base.type not in _TEXT:
                raise self.fail(f"toString() is translated for one text value only, got {base.type}")
            return base
        if name == "substring" and len(params) in (1, 2):
            return self.substring(params, base)
        raise self.fail(f"the function {name}() is not translated")

    def filter(self, param: Mapping[str, Any], base: Coll) -> Coll:
        if base.empty:
            return base

        def test(item: Coll) -> Coll:
            return self.boolean(self.expr(param, item))

        return replace(base, expr=self.b.where(base, test))

    def of_type(self, params: list[Mapping[str, Any]], base: Coll) -> Coll:
        if len(params) != 1:
            raise self.fail("ofType() takes one type")
        wanted = params[0].get("text", "")
        if base.choice is None or base.owner is None:
            if base.type and base.type.lower() == wanted.lower():
                return base
            raise self.fail(f"ofType({wanted}) is translated on choice elements (value[x], effective[x]) only")
        types = model.choice_types(base.owner, base.choice)
        match = next((json for t, json in types.items() if t.lower() == wanted.lower()), None)
        if match is None:
            raise self.fail(f"{base.owner}.{base.choice} has no type {wanted!r} (it has {', '.join(types)})")
        return self.step(replace(base, choice=None, owner=None), match)

    def reference_key(self, params: list[Mapping[str, Any]], base: Coll) -> Coll:
        wanted = params[0].get("text") if params else None
        if base.type != "Reference":
            raise self.fail(f"getReferenceKey() needs a Reference, got {base.type}")
        if base.many:
            raise self.fail("getReferenceKey() on a repeated Reference is not translated; add first() or forEach")
        ref = self.step(base, "reference")
        if ref.empty:
            return Coll(many=False, type="string", empty=True, expr=self.b.null())
        return Coll(many=False, type="string", expr=self.b.reference_key(ref, wanted))

    def substring(self, params: list[Mapping[str, Any]], base: Coll) -> Coll:
        if base.many or base.type not in _TEXT:
            raise self.fail(f"substring() is translated for one text value only, got {base.type}")
        numbers = []
        for p in params:
            text = p.get("text", "")
            if not text.isdigit():
                raise self.fail("substring() is translated with non-negative integer literals only")
            numbers.append(int(text))
        if base.empty:
            return base
        length = numbers[1] if len(numbers) > 1 else None
        return Coll(many=False, type="string", expr=self.b.substring(base, numbers[0], length))


def _union_parts(node: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The operands of ``(a | b | …)`` when ``node`` is that parenthesized union, else None."""
    if node.get("type") != "TermExpression":
        return None
    term = node["children"][0]
    if term.get("type") != "ParenthesizedTerm":
        return None
    inner = term["children"][0]
    if inner.get("type") != "UnionExpression":
        return None
    parts: list[Mapping[str, Any]] = []
    for child in inner["children"]:
        sub = _union_parts({"type": "TermExpression", "children": [{"type": "ParenthesizedTerm",
                                                                      "children": [child]}]})
        parts.extend(sub if sub is not None else [child])
    return parts


class Compiler(_Compiler):
    """The compiler with ``|`` under ``first()``/``exists()``."""

    def expr(self, node: Mapping[str, Any], focus: Coll) -> Coll:
        if node["type"] == "InvocationExpression":
            parts = _union_parts(node["children"][0])
            fn = node["children"][1]
            if parts is not None and fn["type"] == "FunctionInvocation":
                name = _identifier(fn["children"][0]["children"][0])
                has_params = len(fn["children"][0]["children"]) > 1
                if name in ("first", "exists") and not has_params:
                    return self.union(name, [self.expr(p, focus) for p in parts])
        return super().expr(node, focus)

    def union(self, name: str, parts: list[Coll]) -> Coll:
        for p in parts:
            if p.choice is not None:
                raise self.fail(f"the choice element {p.choice!r} needs ofType(<type>) to be translated")
        types = {p.type for p in parts}
        if len(types) > 1:
            raise self.fail(f"'|' of different types ({', '.join(sorted(str(t) for t in types))}) is not translated")
        live = [p for p in parts if not p.empty]
        if name == "exists":
            if not live:
                return Coll(many=False, type="boolean", expr=self.b.false())
            result = Coll(many=False, type="boolean", expr=self.b.exists(live[0]))
            for p in live[1:]:
                result = Coll(many=False, type="boolean",
                              expr=self.b.logic("or", result, Coll(many=False, type="boolean",
                                                                   expr=self.b.exists(p))))
            return result
        firsts = [self.function("first", [], p) for p in live]
        if not firsts:
            return replace(parts[0], many=False)
        result = firsts[0]
        for p in firsts[1:]:
            result = replace(result, expr=self.b.coalesce(result, p), arrow=result.arrow or p.arrow)
        return result



__all__ = ["Compiler"]
