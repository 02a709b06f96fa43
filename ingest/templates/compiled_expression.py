"""A compiled template expression (`CompiledExpression`), what both compilers build: JSONPath
(`ingest.templates.jsonpath_compiler`) and JMESPath (`ingest.templates.jmespath_compiler`).
`ingest.templates.expressions.compile_expression` chooses between them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jmespath.exceptions

from ingest.templates.errors import EXPRESSION_ERROR, MappingFailure

JSONPATH = "JsonPath"
JMESPATH = "JmesPath"
LANGUAGES = {"jsonpath": JSONPATH, "jmespath": JMESPATH}


class ExpressionCompileError(ValueError):
    """An expression that does not parse, or calls an unknown function / wrong argument count."""


class Unsupported(Exception):
    """A parse-tree node a closure compiler does not handle: the library's own evaluator runs the
    whole expression instead."""


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

    `value` is the compiler's own function when it gives one (`single`: it fails with a
    `MappingFailure` itself; a plain member path, which cannot fail): it runs for every id, time and
    value of every measurement, so it is called without a wrapper in between.
    """

    __slots__ = ("text", "language", "_find", "value", "scan_anchor", "scan_test", "envelope_only", "group")
    value: Callable[[Any], Any]

    def __init__(self, text: str, language: str, find: Callable[[Any], list],
                 scan: tuple[str, Callable[[Any, Any], bool]] | None = None,
                 single: Callable[[Any], Any] | None = None,
                 group: tuple[Any, frozenset[str], Callable[[Any], dict | None]] | None = None):
        self.text = text
        self.language = language
        self._find = find
        self.value = single if single is not None else self._value_of_find
        # For `$..[?(@a.b && @c)]`: anchor "a" and the filter test. Every match has member "a", so
        # a template collection can index the message's members once and test only the objects
        # that have the anchor, skipping templates whose anchor is absent (see device.py).
        self.scan_anchor: str | None = scan[0] if scan else None
        self.scan_test: Callable[[Any, Any], bool] | None = scan[1] if scan else None
        self.envelope_only = _envelope_only(text, language)
        # For `X[?key == 'literal']`: (signature of X and key, frozenset of literals, groups_of). While a message
        # is cached, groups_of(message) maps each value of key to its elements (None: X is not a
        # list), so a template collection discriminating on one key groups the message once and
        # skips every template whose literal is absent without evaluating it.
        self.group = group

    def __repr__(self) -> str:
        return f"CompiledExpression({self.language}: {self.text!r})"

    def _failed(self, exc: Exception) -> MappingFailure:
        return expression_failure(self.language, self.text, exc)

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

    def _value_of_find(self, data: Any) -> Any:
        found = self.find(data)
        if not found:
            return None
        if len(found) > 1:
            raise several_values(self.language, self.text, len(found))
        return found[0]


def expression_failure(language: str, text: str, exc: Exception) -> MappingFailure:
    """What an evaluation error means for the message: an expression error naming the expression."""
    return MappingFailure(EXPRESSION_ERROR, f"{language} expression {text!r} failed: {describe_error(exc)}",
                          expression=text)


def several_values(language: str, text: str, count: int) -> MappingFailure:
    return MappingFailure(EXPRESSION_ERROR,
                          f"{language} expression {text!r} selected {count} values where one was expected",
                          expression=text)


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


def describe_error(exc: Exception) -> str:
    # Exception texts from jmespath can quote the offending value; keep only the kind and the
    # function signature part, which is what a template author needs.
    text = str(exc)
    if isinstance(exc, jmespath.exceptions.JMESPathTypeError):
        return f"type error in {exc.function_name}() (expected {exc.expected_types})"
    return f"{type(exc).__name__}: {text}" if len(text) < 200 else type(exc).__name__
