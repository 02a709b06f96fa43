"""MedTech's custom JMESPath functions (`docs/CustomFunctions.md` in microsoft/iomt-fhir): add,
subtract, multiply, divide, pow, insertString, fromUnixTimestamp, fromUnixTimestampMs; the
load-time check of function names and argument counts (as in MedTech), and direct calls that skip
jmespath's per-call type checker when the arguments are of the expected JSON kinds."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jmespath
from jmespath import functions as jp_functions

from common.jsonnum import WrittenNumber
from ingest.templates.compiled_expression import ExpressionCompileError

_LONG_MIN = -(2**63)
_LONG_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
JMES_OPTIONS = jmespath.Options(custom_functions=MedTechFunctions())
FUNCTION_TABLE: dict[str, dict[str, Any]] = MedTechFunctions().FUNCTION_TABLE


def check_functions(node: Any, text: str) -> None:
    """Load-time check that every function exists and gets the right number of arguments
    (jmespath itself only checks when the function runs)."""
    if isinstance(node, dict):
        if node.get("type") == "function_expression":
            name = str(node.get("value"))
            entry = FUNCTION_TABLE.get(name)
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
            check_functions(child, text)


JMES_FUNCTIONS = MedTechFunctions()


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    # not bool; JSON gives exact types (a float with a fraction may be a WrittenNumber, common.jsonnum)
    "number": lambda v: type(v) is int or type(v) is float or type(v) is WrittenNumber,
    "string": lambda v: type(v) is str,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _any_of(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    return lambda value: any(test(value) for test in tests)


def direct_function(name: str) -> tuple[Callable[..., Any], list[Callable[[Any], bool] | None]] | None:
    """The function's own method and a cheap check per argument, for fixed-arity functions whose
    arguments are plain JSON kinds; None when jmespath's full checker must run every time."""
    entry = FUNCTION_TABLE.get(name)
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
        checks.append(tests[0] if len(tests) == 1 else _any_of(tests))
    return entry["function"].__get__(JMES_FUNCTIONS), checks


def direct_call(name: str, method: Callable[..., Any], args: list[Callable[[Any], Any]],
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
