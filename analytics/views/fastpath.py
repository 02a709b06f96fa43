"""A direct evaluator for the simple FHIRPath that most view columns use, beside fhirpathpy.

fhirpathpy interprets every expression node by node (~0.1 ms for ``subject.getReferenceKey(Patient)``), which
makes a million-row view take many minutes. The paths of typical views are member chains with ``ofType``,
``first()``, ``exists()``, ``where(a = 'x' and b = %c)`` and the view functions; this module compiles exactly
that subset to Python closures over the plain JSON. Anything outside it — at compile time or when the data
surprises it (``ofType`` on a non-choice element, a missing variable) — raises :class:`Unsupported`, and the
caller evaluates the expression with fhirpathpy instead, so results never depend on which path ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fhirpathpy.models import models

_MODEL = models["r4"]
_TYPE_NAMES = {t.lower() for t in _MODEL["type2Parent"]} | {
    "string", "boolean", "integer", "decimal", "date", "datetime", "time", "instant", "uri", "url", "code", "id",
    "canonical", "oid", "uuid", "markdown", "base64binary", "positiveint", "unsignedint", "integer64"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", re.S)
_STRING = re.compile(r"^'([^'\\]*)'$")
_DATELIKE = re.compile(r"^\d{4}-\d{2}|^\d{2}:\d{2}")

Item = tuple[Any, str | None]  # a value and, when it came from a choice element, its type (valueQuantity)
Fn = Callable[[list[Item], Mapping[str, Any]], list[Item]]


class Unsupported(Exception):
    """This expression (or this data) needs the full FHIRPath engine."""


def _split(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    depth, quote, i, start = 0, False, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _member(name: str) -> Fn:
    def step(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        out: list[Item] = []
        for value, _hint in items:
            if not isinstance(value, dict):
                continue
            if name in value:
                v, hint = value[name], None
            else:
                v, hint = None, None
                for key in value:
                    if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper() \
                            and key[len(name):].lower() in _TYPE_NAMES:
                        v, hint = value[key], key[len(name):]
                        break
                if v is None:
                    continue
            if isinstance(v, list):
                out.extend((x, hint) for x in v if x is not None)
            else:
                out.append((v, hint))
        return out

    return step


def _of_type(type_name: str) -> Fn:
    wanted = type_name.lower()

    def step(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        out: list[Item] = []
        for value, hint in items:
            if hint is None:
                raise Unsupported("ofType on an element whose type the JSON does not say")
            if hint.lower() == wanted:
                out.append((value, hint))
        return out

    return step


def _reference_key(type_name: str | None) -> Fn:
    def step(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        out: list[Item] = []
        for value, _ in items:
            ref = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(ref, str) or "/" not in ref:
                continue
            parts = ref.split("/")
            if len(parts) >= 4 and parts[-2] == "_history":
                parts = parts[:-2]
            if type_name and parts[-2] != type_name:
                continue
            out.append((parts[-1], None))
        return out

    return step


def _equals(left: Fn, right: Callable[[Mapping[str, Any]], Any]) -> Fn:
    def step(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        values = left(items, env)
        if not values:
            return []
        other = right(env)
        if len(values) != 1:
            return [(False, None)]
        value = values[0][0]
        if isinstance(value, bool) or isinstance(other, bool):
            equal = isinstance(value, bool) and isinstance(other, bool) and value == other
        elif isinstance(value, (int, float)) and isinstance(other, (int, float)):
            equal = value == other
        elif isinstance(value, str) and isinstance(other, str):
            if _DATELIKE.match(value) or _DATELIKE.match(other):
                raise Unsupported("date equality has precision rules")
            equal = value == other
        else:
            raise Unsupported("equality of complex or mixed values")
        return [(equal, None)]

    return step


def _truth(result: list[Item]) -> bool | None:
    if not result:
        return None
    if len(result) == 1 and isinstance(result[0][0], bool):
        return result[0][0]
    raise Unsupported("a condition that is not one boolean")


def _and(terms: list[Fn]) -> Fn:
    def step(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        seen_empty = False
        for term in terms:
            t = _truth(term(items, env))
            if t is False:
                return [(False, None)]
            if t is None:
                seen_empty = True
        return [] if seen_empty else [(True, None)]

    return step


def _condition(text: str) -> Fn:
    terms = [t.strip() for t in _split(text, " and ")]
    compiled: list[Fn] = []
    for term in terms:
        sides = _split(term, "=")
        if len(sides) == 1:
            compiled.append(_path(term))
            continue
        if len(sides) != 2 or term.count("!") or "<" in term or ">" in term or "~" in term:
            raise Unsupported(term)
        left, right = sides[0].strip(), sides[1].strip()
        m = _STRING.match(right)
        if m:
            compiled.append(_equals(_path(left), _constant(m.group(1))))
        elif right.startswith("%") and _IDENT.match(right[1:]):
            name = right[1:]

            def var(env: Mapping[str, Any], name: str = name) -> Any:
                if name not in env:
                    raise Unsupported(f"%{name}")
                return env[name]

            compiled.append(_equals(_path(left), var))
        else:
            raise Unsupported(right)
    return compiled[0] if len(compiled) == 1 else _and(compiled)


def _constant(value: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda env: value


def _per_item(cond: Fn) -> Callable[[Item, Mapping[str, Any]], bool | None]:
    return lambda item, env: _truth(cond([item], env))


def _function(name: str, args: str) -> Fn:
    args = args.strip()
    if name == "first" and not args:
        return lambda items, env: items[:1]
    if name == "exists":
        if not args:
            return lambda items, env: [(bool(items), None)]
        test = _per_item(_condition(args))
        return lambda items, env: [(any(test(i, env) for i in items), None)]
    if name == "where" and args:
        test = _per_item(_condition(args))
        return lambda items, env: [i for i in items if test(i, env)]
    if name == "ofType" and _IDENT.match(args):
        return _of_type(args)
    if name == "getResourceKey" and not args:
        return lambda items, env: [(v["id"], None) for v, _ in items if isinstance(v, dict) and v.get("id") is not None]
    if name == "getReferenceKey" and (not args or _IDENT.match(args)):
        return _reference_key(args or None)
    raise Unsupported(f"{name}()")


def _path(text: str) -> Fn:
    steps = [s.strip() for s in _split(text.strip(), ".")]
    if not steps or not all(steps):
        raise Unsupported(text)
    compiled: list[Fn] = []
    for i, step in enumerate(steps):
        call = _CALL.match(step)
        if call:
            compiled.append(_function(call.group(1), call.group(2)))
        elif i == 0 and step.startswith("%") and _IDENT.match(step[1:]):
            name = step[1:]

            def var(items: list[Item], env: Mapping[str, Any], name: str = name) -> list[Item]:
                if name not in env:
                    raise Unsupported(f"%{name}")
                value = env[name]
                return [] if value is None else [(value, None)]

            compiled.append(var)
        elif i == 0 and step == "$this":
            compiled.append(lambda items, env: items)
        elif _IDENT.match(step) and not step[0].isupper() and step not in ("and", "or", "not", "true", "false"):
            compiled.append(_member(step))
        else:
            raise Unsupported(step)

    def run(items: list[Item], env: Mapping[str, Any]) -> list[Item]:
        for fn in compiled:
            items = fn(items, env)  # no early exit: exists() of nothing is false, not empty
        return items

    return run


def compile_fast(text: str) -> Callable[[Any, Mapping[str, Any]], list[Any]] | None:
    """A fast evaluator of ``text`` returning plain JSON values, or None when the expression needs fhirpathpy."""
    try:
        run = _path(text)
    except Unsupported:
        return None

    def evaluate(focus: Any, env: Mapping[str, Any]) -> list[Any]:
        return [v for v, _ in run([(focus, None)], env)]

    return evaluate
