"""Template expressions: JSONPath (MedTech's Newtonsoft dialect) and JMESPath with MedTech's functions.

Every expression is compiled once, when its template loads (`compile_expression`). Per message
only the compiled form runs.

JSONPath is parsed with `jsonpath-ng` (its extended grammar, which accepts filters) and the parse
tree is then compiled into small Python closures. Two reasons for the second step:

* **Dialect.** Templates were written for Newtonsoft.Json. There `$..[?(@heartrate)]` tests the
  root token itself as well as every descendant (so it matches a flat message), and `@heartrate`
  means `@.heartrate`. A filter on an existence test matches when the member is present, whatever
  its value (even `null` or `false`).
* **Speed.** Normalization must stay within a small factor of `json.loads`; walking jsonpath-ng's
  generic `DatumInContext` objects per message is several times slower than direct dict access.

Parse-tree nodes the compiler does not know (unions, arithmetic, the string extensions...) fall
back to jsonpath-ng's own evaluator for the whole expression, so nothing that parses is refused.

JMESPath uses `jmespath` with the eight custom functions MedTech documents
(`docs/CustomFunctions.md` in microsoft/iomt-fhir): add, subtract, multiply, divide, pow,
insertString, fromUnixTimestamp, fromUnixTimestampMs. Unknown functions and wrong argument counts
are load-time errors, as in MedTech.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jmespath
import jmespath.exceptions
from jmespath import functions as jp_functions
from jsonpath_ng import jsonpath as jp
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.ext import filter as jp_filter
from jsonpath_ng.ext import parse as jsonpath_parse

from common.jsonnum import WrittenNumber
from ingest.templates.errors import EXPRESSION_ERROR, MappingFailure

JSONPATH = "JsonPath"
JMESPATH = "JmesPath"
LANGUAGES = {"jsonpath": JSONPATH, "jmespath": JMESPATH}

_LONG_MIN = -(2**63)
_LONG_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Evaluator = Callable[[Any, Any], list]  # (current node, root) -> matches


class ExpressionCompileError(ValueError):
    """An expression that does not parse, or calls an unknown function / wrong argument count."""


def normalize_language(value: Any) -> str | None:
    """MedTech spells the language `JsonPath`/`JmesPath`; accept any case. None if unknown."""
    if not isinstance(value, str):
        return None
    return LANGUAGES.get(value.strip().lower())


class CompiledExpression:
    """One compiled template expression.

    `find(data)` returns every match (used for `typeMatchExpression`: each match is one
    measurement). `value(data)` returns the single value an id/timestamp/value expression selects,
    None when it selects nothing, and fails when it selects several.
    """

    __slots__ = ("text", "language", "_find", "_single", "scan_anchor", "scan_test", "envelope_only", "group")

    def __init__(self, text: str, language: str, find: Callable[[Any], list],
                 scan: tuple[str, Callable[[Any, Any], bool]] | None = None,
                 single: Callable[[Any], Any] | None = None,
                 group: tuple[Any, str, Callable[[Any], dict | None]] | None = None):
        self.text = text
        self.language = language
        self._find = find
        self._single = single  # a plain member path: its value or None, without building a list
        # For `$..[?(@a.b && @c)]`: anchor "a" and the filter test. Every match has member "a", so
        # a template collection can index the message's members once and test only the objects
        # that have the anchor, skipping templates whose anchor is absent (see device.py).
        self.scan_anchor, self.scan_test = scan if scan else (None, None)
        self.envelope_only = _envelope_only(text, language)
        # For `X[?key == 'literal']`: (signature of X and key, frozenset of literals, groups_of). While a message
        # is cached, groups_of(message) maps each value of key to its elements (None: X is not a
        # list), so a template collection discriminating on one key groups the message once and
        # skips every template whose literal is absent without evaluating it.
        self.group = group

    def __repr__(self) -> str:
        return f"CompiledExpression({self.language}: {self.text!r})"

    def _failed(self, exc: Exception) -> MappingFailure:
        """What an evaluation error means for the message: an expression error naming the expression."""
        return MappingFailure(EXPRESSION_ERROR, f"{self.language} expression {self.text!r} failed: {_describe(exc)}",
                              expression=self.text)

    def find(self, data: Any) -> list:
        try:
            return self._find(data)
        except MappingFailure:
            raise
        except Exception as exc:  # a JMESPath type error, a custom function error, ...
            raise self._failed(exc) from None

    def groups(self, data: Any) -> dict | None:
        """For an expression with `group`: the message's elements grouped by the key (None: no
        list to group), failing like `find` does."""
        assert self.group is not None
        try:
            return self.group[2](data)
        except MappingFailure:
            raise
        except Exception as exc:
            raise self._failed(exc) from None

    def value(self, data: Any) -> Any:
        if self._single is not None:
            try:
                return self._single(data)
            except MappingFailure:
                raise
            except Exception as exc:
                raise self._failed(exc) from None
        found = self.find(data)
        if not found:
            return None
        if len(found) > 1:
            raise MappingFailure(
                EXPRESSION_ERROR,
                f"{self.language} expression {self.text!r} selected {len(found)} values where one was expected",
                expression=self.text,
            )
        return found[0]


_ROOT_MEMBER = re.compile(r"^\$(\.[A-Za-z_]|\[['\"])")


def _envelope_only(text: str, language: str) -> bool:
    """True when the expression gives the same result on `{envelope..., matchedToken}` as on the
    envelope alone: it never reaches `matchedToken` (by name, by wildcard or by descent). Such an
    expression is evaluated once per message, not once per match and template."""
    if "matchedToken" in text:
        return False
    if language == JSONPATH:
        return bool(_ROOT_MEMBER.match(text)) and ".." not in text
    return "@" not in text and "*" not in text


def _describe(exc: Exception) -> str:
    # Exception texts from jmespath can quote the offending value; keep only the kind and the
    # function signature part, which is what a template author needs.
    text = str(exc)
    if isinstance(exc, jmespath.exceptions.JMESPathTypeError):
        return f"type error in {exc.function_name}() (expected {exc.expected_types})"
    return f"{type(exc).__name__}: {text}" if len(text) < 200 else type(exc).__name__


def compile_expression(spec: Any, default_language: str = JSONPATH) -> CompiledExpression:
    """Compile a template expression: a string (in `default_language`) or
    `{"value": "...", "language": "JsonPath"|"JmesPath"}`."""
    language = default_language
    if isinstance(spec, dict):
        text = spec.get("value")
        if "language" in spec and spec["language"] is not None:
            language = normalize_language(spec["language"]) or ""
            if not language:
                raise ExpressionCompileError(
                    f"unknown expression language {spec['language']!r} (use JsonPath or JmesPath)"
                )
    else:
        text = spec
    if not isinstance(text, str) or not text.strip():
        raise ExpressionCompileError("an expression must be set (a non-empty string)")
    if language == JMESPATH:
        return _compile_jmespath(text)
    return _compile_jsonpath(text)


# ------------------------------------------------------------------------------------------------
# JMESPath


def _check_long(value: Any, function: str) -> Any:
    kind = type(value)  # exact types: a bool is not checked as a number (JSON gives no int subclasses)
    if kind is int:
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise ArithmeticError(f"{function}() result does not fit a 64-bit integer")
    elif kind is float and not math.isfinite(value):
        raise ArithmeticError(f"{function}() result is not a finite number")
    return value


class MedTechFunctions(jp_functions.Functions):
    """MedTech's custom JMESPath functions. Integer arithmetic stays integer where exact; results
    outside a 64-bit integer or non-finite floats are errors, as MedTech's "mathematic error"."""

    @jp_functions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_add(self, left: float, right: float) -> float:
        return _check_long(left + right, "add")

    @jp_functions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_subtract(self, left: float, right: float) -> float:
        return _check_long(left - right, "subtract")

    @jp_functions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_multiply(self, left: float, right: float) -> float:
        return _check_long(left * right, "multiply")

    @jp_functions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_divide(self, left: float, right: float) -> float:
        if right == 0:
            raise ZeroDivisionError("divide() by zero")
        # Exact integer quotients stay integers (MedTech returns an integer for 100/25); a
        # non-exact one is returned exactly rather than truncated.
        if isinstance(left, int) and isinstance(right, int) and left % right == 0:
            return _check_long(left // right, "divide")
        return _check_long(left / right, "divide")

    @jp_functions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_pow(self, base: float, exponent: float) -> float:
        if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
            if abs(base) > 1 and exponent > 64:
                raise ArithmeticError("pow() result does not fit a 64-bit integer")
            return _check_long(base**exponent, "pow")
        try:
            result = math.pow(base, exponent)
        except (OverflowError, ValueError):
            raise ArithmeticError("pow() result is not a finite number") from None
        return _check_long(result, "pow")

    @jp_functions.signature({"types": ["string"]}, {"types": ["string"]}, {"types": ["number"]})
    def _func_insertString(self, original: str, to_insert: str, position: float) -> str:  # noqa: N802
        if isinstance(position, float):
            if not position.is_integer():
                raise ValueError("insertString() position must be a whole number")
            position = int(position)
        if not 0 <= position <= len(original):
            raise IndexError(f"insertString() position {position} is outside 0..{len(original)}")
        return original[:position] + to_insert + original[position:]

    @jp_functions.signature({"types": ["number"]})
    def _func_fromUnixTimestamp(self, seconds: float) -> str:  # noqa: N802
        return _iso_utc(_EPOCH + timedelta(seconds=seconds))

    @jp_functions.signature({"types": ["number"]})
    def _func_fromUnixTimestampMs(self, millis: float) -> str:  # noqa: N802
        return _iso_utc(_EPOCH + timedelta(milliseconds=millis))


def _iso_utc(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# jmespath types arguments by `type(value).__name__` (functions.TYPES_MAP): a JSON number read as
# written (common.jsonnum.WrittenNumber) is a "number" to it, as the float it is.
jp_functions.TYPES_MAP.setdefault(WrittenNumber.__name__, "number")
if WrittenNumber.__name__ not in jp_functions.REVERSE_TYPES_MAP["number"]:
    jp_functions.REVERSE_TYPES_MAP["number"] = (*jp_functions.REVERSE_TYPES_MAP["number"], WrittenNumber.__name__)
_JMES_OPTIONS = jmespath.Options(custom_functions=MedTechFunctions())
_FUNCTION_TABLE: dict[str, dict[str, Any]] = MedTechFunctions().FUNCTION_TABLE


def _check_functions(node: Any, text: str) -> None:
    """Load-time check that every function exists and gets the right number of arguments
    (jmespath itself only checks when the function runs)."""
    if isinstance(node, dict):
        if node.get("type") == "function_expression":
            name = node.get("value")
            entry = _FUNCTION_TABLE.get(name)
            if entry is None:
                raise ExpressionCompileError(f"unknown function {name}() in JMESPath expression {text!r}")
            signature = entry["signature"]
            given = len(node.get("children", []))
            variadic = bool(signature) and signature[-1].get("variadic")
            if (given != len(signature) and not variadic) or (variadic and given < len(signature)):
                raise ExpressionCompileError(
                    f"{name}() takes {len(signature)} argument(s), {given} given, in JMESPath expression {text!r}"
                )
        for child in node.get("children", []):
            _check_functions(child, text)


def _compile_jmespath(text: str) -> CompiledExpression:
    try:
        parsed = jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as exc:
        raise ExpressionCompileError(f"JMESPath expression {text!r} does not parse: {exc}") from None
    _check_functions(parsed.parsed, text)
    try:
        evaluate = _jmes_node(parsed.parsed)
    except _Unsupported:
        search = parsed.search
        options = _JMES_OPTIONS

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
        result = evaluate(data)
        if type(result) is not list:
            return result
        items = [r for r in result if r is not None]
        if len(items) > 1:
            raise MappingFailure(
                EXPRESSION_ERROR,
                f"{JMESPATH} expression {text!r} selected {len(items)} values where one was expected",
                expression=text,
            )
        return items[0] if items else None

    return CompiledExpression(text, JMESPATH, find, single=single, group=getattr(evaluate, "group", None))


# The JMESPath parse tree compiled to closures, with the semantics of jmespath's TreeInterpreter
# (jmespath/visitor.py): same falsiness, same number/bool comparisons, functions called through the
# same function table (so type errors are identical). Nodes not listed fall back to the interpreter.

_JMES_FUNCTIONS = MedTechFunctions()


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


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    # not bool; JSON gives exact types (a float with a fraction may be a WrittenNumber, common.jsonnum)
    "number": lambda v: type(v) is int or type(v) is float or type(v) is WrittenNumber,
    "string": lambda v: type(v) is str,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _direct_function(name: str) -> tuple[Callable[..., Any], list[Callable[[Any], bool] | None]] | None:
    """The function's own method and a cheap check per argument, for fixed-arity functions whose
    arguments are plain JSON kinds; None when jmespath's full checker must run every time."""
    entry = _FUNCTION_TABLE.get(name)
    if entry is None:
        return None
    checks: list[Callable[[Any], bool] | None] = []
    for spec in entry["signature"]:
        if spec.get("variadic"):
            return None
        kinds = spec.get("types", [])
        if not kinds:
            checks.append(None)  # any value: nothing to check
            continue
        if any(k not in _KIND_CHECKS for k in kinds):
            return None
        tests = [_KIND_CHECKS[k] for k in kinds]
        checks.append(tests[0] if len(tests) == 1 else lambda v, tests=tests: any(t(v) for t in tests))
    return entry["function"].__get__(_JMES_FUNCTIONS), checks


def _direct_call(name: str, method: Callable[..., Any], args: list[Callable[[Any], Any]],
                 checks: list[Callable[[Any], bool] | None], call: Callable[[str, list], Any]) -> Callable[[Any], Any]:
    """A function node that calls the function itself when its arguments are of the expected
    kinds, and otherwise lets jmespath's checker raise its usual type error. One- and
    two-argument calls (nearly all of MedTech's) get closures without per-call loops: they run
    once per measurement, for every timestamp conversion."""
    if len(args) == 1:
        (arg,), (check,) = args, checks

        def call1(value: Any) -> Any:
            v = arg(value)
            if check is None or check(v):
                return method(v)
            return call(name, [v])

        return call1
    if len(args) == 2:
        (arg0, arg1), (check0, check1) = args, checks

        def call2(value: Any) -> Any:
            v0, v1 = arg0(value), arg1(value)
            if (check0 is None or check0(v0)) and (check1 is None or check1(v1)):
                return method(v0, v1)
            return call(name, [v0, v1])

        return call2

    def function(value: Any) -> Any:
        resolved = [a(value) for a in args]
        if all(check is None or check(v) for check, v in zip(checks, resolved, strict=True)):
            return method(*resolved)
        return call(name, resolved)

    return function


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
    """`X[?key == 'literal']` or `X[?contains(`[literals]`, key)]`: group X's elements by `key` once
    per message (see _MessageCache)."""
    found = _discriminator(condition)
    if found is None:
        return None
    key, literals = found
    wanted = frozenset(literals)
    base_fn = _jmes_node(base)
    signature = (json.dumps(base, sort_keys=True), key)
    cache = _cache

    def direct(value: Any) -> Any:
        elements = base_fn(value)
        if type(elements) is not list:
            return None
        return [e for e in elements if type(e) is dict and type(e.get(key)) is str and e[key] in wanted]

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
        return list(groups[present[0]]) if present else []

    # Read by _compile_jmespath: lets a template collection test the literals itself (see CompiledExpression.group).
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
            raise _Unsupported("expression reference")
        name = node["value"]
        args = [_jmes_node(c) for c in children]
        if name == "to_array":  # signature `any`: no type check to repeat
            only = args[0]

            def to_array(value: Any) -> Any:
                result = only(value)
                return result if type(result) is list else [result]

            return to_array
        call = _JMES_FUNCTIONS.call_function
        direct = _direct_function(name)
        if direct is not None:
            return _direct_call(name, direct[0], args, direct[1], call)
        return lambda value: call(name, [a(value) for a in args])
    raise _Unsupported(kind)


# ------------------------------------------------------------------------------------------------
# JSONPath


class _Unsupported(Exception):
    """A parse-tree node the closure compiler does not handle; use jsonpath-ng's evaluator."""


def _compile_jsonpath(text: str) -> CompiledExpression:
    try:
        tree = jsonpath_parse(text)
    except (JsonPathParserError, JsonPathLexerError, Exception) as exc:  # ply raises plain Exception too
        raise ExpressionCompileError(f"JSONPath expression {text!r} does not parse: {exc}") from None
    tree = _rewrite_at_names(tree, in_filter=False)
    scan = None
    if isinstance(tree, jp.Descendants) and isinstance(tree.left, jp.Root) and isinstance(tree.right, jp_filter.Filter):
        keys = [_relative_keys(e.target) if isinstance(e, jp_filter.Expression) and e.op is None else None
                for e in tree.right.expressions]
        if keys and all(k is not None for k in keys):
            scan = (keys[0][0], _compile_filter(tree.right))  # type: ignore[index]
    single = None
    steps = _simple_steps(tree)
    if steps is not None and isinstance(steps[0], jp.Root | jp.This):
        single = _single_getter(steps[1:])
    try:
        evaluator = _compile_node(tree)

        def find(data: Any) -> list:
            return evaluator(data, data)

    except _Unsupported:
        fallback = tree

        def find(data: Any) -> list:
            return [match.value for match in fallback.find(data)]

    return CompiledExpression(text, JSONPATH, find, scan, single)


def _single_getter(keys: list[Any]) -> Callable[[Any], Any]:
    def get(node: Any) -> Any:
        for key in keys:
            if type(key) is str:
                if type(node) is not dict:
                    return None
                node = node.get(key)
            else:
                if type(node) is not list:
                    return None
                try:
                    node = node[key.index]
                except IndexError:
                    return None
        return node

    return get


def _rewrite_at_names(node: Any, in_filter: bool) -> Any:
    """Newtonsoft reads `@name` as `@.name`; jsonpath-ng parses it as a field literally named
    "@name". Rewrite the leftmost such field of every filter operand."""
    if isinstance(node, jp_filter.Filter):
        return jp_filter.Filter([_rewrite_at_names(e, True) for e in node.expressions])
    if isinstance(node, jp_filter.Expression):
        value = node.value
        if isinstance(value, jp.JSONPath):
            value = _rewrite_operand(value)
        return jp_filter.Expression(_rewrite_operand(node.target), node.op, value)
    if isinstance(node, jp_filter.Or | jp_filter.And):
        return type(node)([_rewrite_at_names(o, True) for o in node.operands])
    if isinstance(node, jp.Child):
        return jp.Child(_rewrite_at_names(node.left, in_filter), _rewrite_at_names(node.right, in_filter))
    if isinstance(node, jp.Descendants):
        return jp.Descendants(_rewrite_at_names(node.left, in_filter), _rewrite_at_names(node.right, in_filter))
    return node


def _rewrite_operand(node: Any) -> Any:
    if isinstance(node, jp.Fields) and len(node.fields) == 1 and node.fields[0].startswith("@"):
        name = node.fields[0][1:]
        return jp.This() if not name else jp.Child(jp.This(), jp.Fields(name))
    if isinstance(node, jp.Child):
        return jp.Child(_rewrite_operand(node.left), _rewrite_at_names(node.right, True))
    if isinstance(node, jp.Descendants):
        return jp.Descendants(_rewrite_operand(node.left), _rewrite_at_names(node.right, True))
    return _rewrite_at_names(node, True)


def _simple_steps(node: Any) -> list[Any] | None:
    """A chain of single-name fields / single indices from Root or This: compiled to a direct
    lookup loop, the hot path for value expressions like `$.matchedToken.systolic`."""
    steps: list[Any] = []
    while isinstance(node, jp.Child):
        right = node.right
        if isinstance(right, jp.Fields) and len(right.fields) == 1 and right.fields[0] != "*":
            steps.append(right.fields[0])
        elif isinstance(right, jp.Index) and len(right.indices) == 1:
            steps.append(_IndexStep(right.indices[0]))
        else:
            return None
        node = node.left
    if isinstance(node, jp.Fields) and len(node.fields) == 1 and node.fields[0] != "*":
        steps.append(node.fields[0])
        node = jp.This()
    if not isinstance(node, jp.Root | jp.This):
        return None
    steps.append(node)
    steps.reverse()
    return steps


class _IndexStep:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _compile_steps(steps: list[Any]) -> Evaluator:
    from_root = isinstance(steps[0], jp.Root)
    keys = steps[1:]

    def evaluate(current: Any, root: Any) -> list:
        node = root if from_root else current
        for key in keys:
            if type(key) is str:
                if type(node) is not dict:
                    return []
                try:
                    node = node[key]
                except KeyError:
                    return []
            else:
                if type(node) is not list:
                    return []
                try:
                    node = node[key.index]
                except IndexError:
                    return []
        return [node]

    return evaluate


def _children(node: Any) -> list:
    if type(node) is dict:
        return list(node.values())
    if type(node) is list:
        return node
    return []


def _compile_node(node: Any) -> Evaluator:
    steps = _simple_steps(node)
    if steps is not None:
        return _compile_steps(steps)

    if isinstance(node, jp.Root):
        return lambda current, root: [root]
    if isinstance(node, jp.This):
        return lambda current, root: [current]
    if isinstance(node, jp.Fields):
        names = node.fields
        if "*" in names:
            return lambda current, root: list(_children(current))

        def fields(current: Any, root: Any) -> list:
            if type(current) is not dict:
                return []
            return [current[n] for n in names if n in current]

        return fields
    if isinstance(node, jp.Wildcard):
        return lambda current, root: list(_children(current))
    if isinstance(node, jp.Index):
        indices = node.indices

        def index(current: Any, root: Any) -> list:
            if type(current) is not list:
                return []
            size = len(current)
            return [current[i] for i in indices if -size <= i < size]

        return index
    if isinstance(node, jp.Slice):
        start, end, step = node.start, node.end, node.step

        def slice_(current: Any, root: Any) -> list:
            if type(current) is not list:
                return []
            return current[start:end:step]

        return slice_
    if isinstance(node, jp_filter.Filter):
        test = _compile_filter(node)

        def filter_children(current: Any, root: Any) -> list:
            return [child for child in _children(current) if test(child, root)]

        return filter_children
    if isinstance(node, jp.Child):
        left = _compile_node(node.left)
        right = _compile_node(node.right)

        def child(current: Any, root: Any) -> list:
            out: list = []
            for item in left(current, root):
                out.extend(right(item, root))
            return out

        return child
    if isinstance(node, jp.Descendants):
        return _compile_descendants(node)
    raise _Unsupported(type(node).__name__)


class _MessageCache(threading.local):
    """Work shared by every template of a collection evaluating the same message, kept only while
    `message_cache()` is active (one message) and keyed by object identity:

    * `nodes`: the containers of the message in document order. Walking the message once instead
      of once per template is most of the cost of `$..[?(...)]` matching.
    * `groups`: for JMESPath filters of the shape `X[?key == 'literal']`, the elements of X
      grouped by `key`, so eight templates discriminating on `type` cost one pass, not eight.
    """

    def __init__(self) -> None:
        self.active = False
        self.start: Any = None
        self.nodes: list = []
        self.groups: dict[Any, tuple[Any, dict | None]] = {}


_cache = _MessageCache()


@contextmanager
def message_cache() -> Iterator[None]:
    """Share work between the templates evaluating one message (see `_MessageCache`)."""
    _cache.active = True
    try:
        yield
    finally:
        _cache.active = False
        _cache.start, _cache.nodes = None, []
        _cache.groups = {}


def containers(start: Any) -> list:
    """Every object and array in `start`, itself first, in document order."""
    return _containers(start)


def _containers(start: Any) -> list:
    cache = _cache
    if cache.active and cache.start is start:
        return cache.nodes
    nodes: list = []
    _collect(start, nodes)
    if cache.active:
        cache.start, cache.nodes = start, nodes
    return nodes


def _collect(item: Any, nodes: list) -> None:
    nodes.append(item)
    for child in (item.values() if type(item) is dict else item):
        kind = type(child)
        if kind is dict or kind is list:
            _collect(child, nodes)


def _compile_descendants(node: jp.Descendants) -> Evaluator:
    left = _compile_node(node.left)
    right_node = node.right
    if isinstance(right_node, jp_filter.Filter):
        # Newtonsoft: `..[?(...)]` tests the starting token itself and every descendant.
        test = _compile_filter(right_node)
        scalars = _filter_can_match_scalars(right_node)

        def scan_filter(current: Any, root: Any) -> list:
            out: list = []
            for start in left(current, root):
                nodes = _walk_all(start) if scalars or not (type(start) is dict or type(start) is list) \
                    else _containers(start)
                out += [item for item in nodes if test(item, root)]
            return out

        return scan_filter

    right = _compile_node(right_node)

    def scan(current: Any, root: Any) -> list:
        out: list = []
        for start in left(current, root):
            stack = [start]
            while stack:
                item = stack.pop()
                out.extend(right(item, root))
                if type(item) is dict:
                    stack.extend(reversed([c for c in item.values() if type(c) in (dict, list)]))
                elif type(item) is list:
                    stack.extend(reversed([c for c in item if type(c) in (dict, list)]))
        return out

    return scan


def _walk_all(start: Any) -> list:
    nodes: list = []
    stack = [start]
    while stack:
        item = stack.pop()
        nodes.append(item)
        if type(item) is dict:
            stack.extend(reversed(list(item.values())))
        elif type(item) is list:
            stack.extend(reversed(item))
    return nodes


def _filter_can_match_scalars(node: jp_filter.Filter) -> bool:
    """Only a filter that tests `@` itself (`[?(@ > 5)]`) can match a scalar."""

    def targets_this(expr: Any) -> bool:
        if isinstance(expr, jp_filter.Expression):
            return isinstance(expr.target, jp.This)
        if isinstance(expr, jp_filter.Or | jp_filter.And):
            return any(targets_this(o) for o in expr.operands)
        return True

    return any(targets_this(e) for e in node.expressions)


Predicate = Callable[[Any, Any], bool]


def _relative_keys(target: Any) -> list[str] | None:
    """`@.a.b` as ["a", "b"] when the target is a plain key path from the current node."""
    steps = _simple_steps(target)
    if steps is None or not isinstance(steps[0], jp.This) or not all(type(k) is str for k in steps[1:]):
        return None
    return steps[1:] or None


def _exists_fast(keys: list[str]) -> Predicate:
    if len(keys) == 1:
        key = keys[0]
        return lambda item, root: type(item) is dict and key in item
    head, rest = keys[:-1], keys[-1]

    def exists(item: Any, root: Any) -> bool:
        for k in head:
            if type(item) is not dict:
                return False
            item = item.get(k, _MISSING)
        return type(item) is dict and rest in item

    return exists


_MISSING = object()


def _compile_filter(node: jp_filter.Filter) -> Predicate:
    keys = [_relative_keys(e.target) if isinstance(e, jp_filter.Expression) and e.op is None else None
            for e in node.expressions]
    if all(k is not None and len(k) == 1 for k in keys):
        # The common `[?(@a && @b)]`: members present on the node.
        names = tuple(k[0] for k in keys)  # type: ignore[index]
        if len(names) == 1:
            only = names[0]
            return lambda item, root: type(item) is dict and only in item
        return lambda item, root: type(item) is dict and all(n in item for n in names)
    tests = [_compile_predicate(e) for e in node.expressions]
    if len(tests) == 1:
        return tests[0]
    return lambda item, root: all(t(item, root) for t in tests)


def _compile_predicate(expr: Any) -> Predicate:
    if isinstance(expr, jp_filter.Or):
        operands = [_compile_predicate(o) for o in expr.operands]
        return lambda item, root: any(t(item, root) for t in operands)
    if isinstance(expr, jp_filter.And):
        operands = [_compile_predicate(o) for o in expr.operands]
        return lambda item, root: all(t(item, root) for t in operands)
    if not isinstance(expr, jp_filter.Expression):
        raise _Unsupported(type(expr).__name__)
    op = expr.op
    keys = _relative_keys(expr.target)
    if op is None and keys is not None:
        return _exists_fast(keys)
    if op in ("==", "=") and keys is not None and len(keys) == 1 and not isinstance(expr.value, jp.JSONPath):
        key, literal = keys[0], expr.value
        return lambda item, root: type(item) is dict and key in item and _equal(item[key], literal)
    target = _compile_node(expr.target)
    if op is None:  # existence: present, whatever the value (Newtonsoft semantics)
        return lambda item, root: bool(target(item, root))
    if op == "!":
        return lambda item, root: not target(item, root)
    compare = _COMPARATORS.get(op)
    if compare is None:
        raise _Unsupported(f"operator {op}")
    if isinstance(expr.value, jp.JSONPath):
        other = _compile_node(expr.value)

        def compare_paths(item: Any, root: Any) -> bool:
            rights = other(item, root)
            return any(compare(a, b) for a in target(item, root) for b in rights)

        return compare_paths
    literal = expr.value
    if op == "=~" and isinstance(literal, str):
        pattern = re.compile(literal)
        return lambda item, root: any(isinstance(v, str) and pattern.search(v) for v in target(item, root))
    return lambda item, root: any(compare(v, literal) for v in target(item, root))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce_pair(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Newtonsoft compares a numeric string with a number numerically; values of other mixed
    kinds are simply unequal."""
    if _is_number(a) and _is_number(b):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    try:
        if isinstance(a, str) and _is_number(b):
            return float(a), b
        if _is_number(a) and isinstance(b, str):
            return a, float(b)
    except ValueError:
        return None
    return None


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        pair = _coerce_pair(a, b)
        return pair is not None and op(*pair)

    return compare


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    pair = _coerce_pair(a, b)
    if pair is None:
        return a == b if type(a) is type(b) else False
    return pair[0] == pair[1]


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "=": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
    "=~": lambda a, b: isinstance(a, str) and re.search(b, a) is not None,
}
