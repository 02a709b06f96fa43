"""JMESPath template expressions compiled to closures, with the semantics of jmespath's
TreeInterpreter (jmespath/visitor.py): same falsiness, same number/bool comparisons, functions
called through the same function table (so type errors are identical). Nodes not listed fall back
to the interpreter, so nothing that parses is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import jmespath
import jmespath.exceptions

from ingest.templates.compiled_expression import (
    JMESPATH,
    CompiledExpression,
    ExpressionCompileError,
    Unsupported,
    expression_failure,
    several_values,
)
from ingest.templates.errors import MappingFailure
from ingest.templates.jmespath_functions import (
    JMES_FUNCTIONS,
    JMES_OPTIONS,
    check_functions,
    direct_call,
    direct_function,
)
from ingest.templates.message_cache import CACHE


def compile_jmespath(text: str) -> CompiledExpression:
    try:
        parsed = jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExpressionCompileError(f"JMESPath expression {text!r} does not parse: {exc}") from None
    check_functions(parsed.parsed, text)
    try:
        evaluate = _jmes_node(cast(dict[str, Any], parsed.parsed))
    except Unsupported:
        search = parsed.search
        options = JMES_OPTIONS

        def evaluate(data: Any) -> Any:
            return search(data, options=options)

    def find(data: Any) -> list:
        result = evaluate(data)
        if result is None:
            return []
        if type(result) is list:
            return [r for r in result if r is not None]
        return [result]

    def single(data: Any) -> Any:
        try:
            result = evaluate(data)
        except MappingFailure:
            raise
        except Exception as exc:  # a JMESPath type error, a custom function error, ...
            raise expression_failure(JMESPATH, text, exc) from None
        if type(result) is not list:
            return result
        items = [r for r in result if r is not None]
        if len(items) > 1:
            raise several_values(JMESPATH, text, len(items))
        return items[0] if items else None

    return CompiledExpression(text, JMESPATH, find, single=single, group=getattr(evaluate, "group", None))


def _jmes_false(value: Any) -> bool:
    if value is None or value is False:
        return True
    kind = type(value)
    if kind is str or kind is list or kind is dict:
        return not value
    return False


def _actual_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _jmes_equals(x: Any, y: Any) -> bool:
    if _actual_number(x) and x in (0, 1) and isinstance(y, bool):
        return False
    if _actual_number(y) and y in (0, 1) and isinstance(x, bool):
        return False
    return x == y


def _jmes_comparable(x: Any) -> bool:
    return _actual_number(x) or isinstance(x, str)


_JMES_ORDER = {"lt": lambda a, b: a < b, "lte": lambda a, b: a <= b, "gt": lambda a, b: a > b,
               "gte": lambda a, b: a >= b}


def _or_operands(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The operands of a chain of `||`, left to right."""
    if node["type"] != "or_expression":
        return [node]
    left, right = node["children"]
    return [*_or_operands(left), *_or_operands(right)]


def _discriminator(condition: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """(key, literals) of `key == 'literal'` or `contains(`["a", "b"]`, key)` (one of several
    spellings of a type), else None."""
    kind, children = condition["type"], condition.get("children", [])
    if kind == "comparator" and condition["value"] == "eq":
        left, right = children
        if left["type"] == "field" and right["type"] == "literal" and type(right["value"]) is str:
            return left["value"], (right["value"],)
    if kind == "function_expression" and condition["value"] == "contains" and len(children) == 2:
        options, field = children
        if (options["type"] == "literal" and type(options["value"]) is list and options["value"]
                and all(type(o) is str for o in options["value"]) and field["type"] == "field"):
            return field["value"], tuple(dict.fromkeys(options["value"]))
    return None


def _grouped_filter(base: dict[str, Any], condition: dict[str, Any]) -> Callable[[Any], Any] | None:
    """`X[?key == 'literal']` or `X[?contains(`[literals]`, key)]`, optionally `&& <more>`: group X's
    elements by `key` once per message (see ingest.templates.message_cache), then test `<more>` only
    on the group. The discriminator holds a boolean, so `d && more` keeps what `more` keeps."""
    rest = None
    if condition["type"] == "and_expression":
        condition, more = condition["children"]
        rest = _jmes_node(more)
    found = _discriminator(condition)
    if found is None:
        return None
    key, literals = found
    wanted = frozenset(literals)
    base_fn = _jmes_node(base)
    # Keyed by X and key only: templates that add different `&& <more>` share one grouping.
    signature = (json.dumps(base, sort_keys=True), key)
    cache = CACHE

    def direct(value: Any) -> Any:
        elements = base_fn(value)
        if type(elements) is not list:
            return None
        found = [e for e in elements if type(e) is dict and type(e.get(key)) is str and e[key] in wanted]
        return found if rest is None else [e for e in found if not _jmes_false(rest(e))]

    def groups_of(value: Any) -> dict | None:
        entry = cache.groups.get(signature)
        if entry is None or entry[0] is not value:
            elements = base_fn(value)
            groups: dict | None = None
            if type(elements) is list:
                groups = {}
                for e in elements:
                    if type(e) is dict:
                        v = e.get(key)
                        if type(v) is str:  # only a string can equal the string literal
                            groups.setdefault(v, []).append(e)
            entry = cache.groups[signature] = (value, groups)
        return entry[1]

    def grouped(value: Any) -> Any:
        if not cache.active:
            return direct(value)
        groups = groups_of(value)
        if groups is None:
            return None
        present = [lit for lit in literals if lit in groups]
        if len(present) > 1:
            return direct(value)  # several spellings in one message: keep the elements' own order
        if not present:
            return []
        if rest is None:
            return list(groups[present[0]])
        return [e for e in groups[present[0]] if not _jmes_false(rest(e))]

    # Read by compile_jmespath: lets a template collection test the literals itself (see CompiledExpression.group).
    grouped.group = (signature, wanted, groups_of)  # type: ignore[attr-defined]
    return grouped


def _jmes_node(node: dict[str, Any]) -> Callable[[Any], Any]:
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        key = node["value"]

        def field_(value: Any) -> Any:
            return value.get(key) if type(value) is dict else None

        return field_
    if kind in ("subexpression", "index_expression", "pipe"):
        steps = [_jmes_node(c) for c in children]
        if kind == "subexpression" and all(c["type"] == "field" for c in children):
            keys = [c["value"] for c in children]

            def path(value: Any) -> Any:
                for k in keys:
                    if type(value) is not dict:
                        return None
                    value = value.get(k)
                return value

            return path

        def chain(value: Any) -> Any:
            for step in steps:
                value = step(value)
            return value

        return chain
    if kind in ("identity", "current"):
        return lambda value: value
    if kind == "literal":
        literal = node["value"]
        return lambda value: literal
    if kind == "index":
        index = node["value"]

        def index_(value: Any) -> Any:
            if type(value) is not list:
                return None
            try:
                return value[index]
            except IndexError:
                return None

        return index_
    if kind == "or_expression":
        # `a || b || c` parses as `(a || b) || c`: flattened, the first truthy alternative ends it
        # (the generic preset tries several spellings of a key this way).
        alternatives = [_jmes_node(n) for n in _or_operands(node)]

        def or_(value: Any) -> Any:
            matched = None
            for alternative in alternatives:
                matched = alternative(value)
                if not _jmes_false(matched):
                    return matched
            return matched

        return or_
    if kind == "and_expression":
        left, right = _jmes_node(children[0]), _jmes_node(children[1])

        def and_(value: Any) -> Any:
            matched = left(value)
            return matched if _jmes_false(matched) else right(value)

        return and_
    if kind == "not_expression":
        inner = _jmes_node(children[0])

        def not_(value: Any) -> Any:
            result = inner(value)
            if _actual_number(result) and result == 0:
                return False
            return _jmes_false(result)

        return not_
    if kind == "comparator":
        left, right = _jmes_node(children[0]), _jmes_node(children[1])
        op = node["value"]
        literal = children[1].get("value") if children[1]["type"] == "literal" else None
        if op in ("eq", "ne") and type(literal) is str:
            # A string literal: no number/boolean special cases apply.
            if op == "eq":
                return lambda value: left(value) == literal
            return lambda value: left(value) != literal
        if op == "eq":
            return lambda value: _jmes_equals(left(value), right(value))
        if op == "ne":
            return lambda value: not _jmes_equals(left(value), right(value))
        order = _JMES_ORDER[op]

        def compare(value: Any) -> Any:
            a, b = left(value), right(value)
            if not (_jmes_comparable(a) and _jmes_comparable(b)):
                return None
            return order(a, b)

        return compare
    if kind == "filter_projection" and children[1]["type"] in ("identity", "current"):
        grouped = _grouped_filter(children[0], children[2])
        if grouped is not None:
            return grouped
    if kind in ("projection", "filter_projection"):
        base_fn, each = _jmes_node(children[0]), _jmes_node(children[1])
        condition = _jmes_node(children[2]) if kind == "filter_projection" else None

        def project(value: Any) -> Any:
            base = base_fn(value)
            if type(base) is not list:
                return None
            out = []
            for element in base:
                if condition is not None and _jmes_false(condition(element)):
                    continue
                current = each(element)
                if current is not None:
                    out.append(current)
            return out

        return project
    if kind == "flatten":
        inner = _jmes_node(children[0])

        def flatten(value: Any) -> Any:
            base = inner(value)
            if type(base) is not list:
                return None
            out: list = []
            for element in base:
                if type(element) is list:
                    out.extend(element)
                else:
                    out.append(element)
            return out

        return flatten
    if kind == "multi_select_list":
        items = [_jmes_node(c) for c in children]
        return lambda value: None if value is None else [f(value) for f in items]
    if kind == "function_expression":
        if any(c["type"] == "expref" for c in children):
            raise Unsupported("expression reference")
        name = node["value"]
        args = [_jmes_node(c) for c in children]
        if name == "to_array":  # signature `any`: no type check to repeat
            only = args[0]

            def to_array(value: Any) -> Any:
                result = only(value)
                return result if type(result) is list else [result]

            return to_array
        call = JMES_FUNCTIONS.call_function
        direct = direct_function(name)
        if direct is not None:
            return direct_call(name, direct[0], args, direct[1], call)
        return lambda value: call(name, [a(value) for a in args])
    raise Unsupported(kind)
