"""Request bodies as FHIR JSON allows them, checked before anything recurses into them.

Shared by every endpoint that takes FHIR JSON from a client (the REST facade, the Event Grid
webhook, rest-hook subscription notifications): a malformed body is the client's 400 with what is
wrong and where, never a 500 from deeper down.
"""

from __future__ import annotations

import json
from typing import Any

from common import jsonnum
from fhirstore.errors import InvalidResource


def parse_json_body(body: bytes) -> Any:
    """JSON as FHIR allows it (RFC 8259 numbers, valid Unicode), or InvalidResource saying what is wrong.

    Python's parser accepts what FHIR JSON does not (NaN, Infinity, lone surrogate escapes) and
    fails with RecursionError or ValueError on what it cannot hold (nesting past the interpreter's
    recursion limit, integers over `sys.get_int_max_str_digits()` digits): each is the client's
    error, a 400, never a 500 from deeper down (a lone surrogate cannot be stored as UTF-8)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidResource(f"the request body is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidResource(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from None
    except RecursionError:
        raise InvalidResource(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    _check_tree(value)
    return value


# How deep a request body may nest. FHIR resources are shallow (a Questionnaire's nested items or a
# Bundle of contained resources stay well under this); anything deeper is refused before the
# store, its indexes or a validator recurse into it.
MAX_JSON_DEPTH = 100
_MAX_DIGITS = (
    4300  # CPython's default int_max_str_digits (docs.python.org, "Integer string conversion length limitation")
)


class _BadJson(InvalidResource):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise _BadJson(f"the request body has an integer of {len(text.lstrip('-'))} digits; at most {_MAX_DIGITS} "
                       "are accepted (FHIR integers are 32-bit, decimals at most 18 digits)")
    return int(text)


def _parse_float(text: str) -> float:
    value = jsonnum.WrittenNumber(text)  # decimals as written (common/jsonnum.py)
    if value in (float("inf"), float("-inf")):
        raise _BadJson(f"the request body has a number out of range ({text[:40]}{'...' if len(text) > 40 else ''})")
    return value


def _parse_constant(name: str) -> float:
    raise _BadJson(f"the request body has {name}, which is not a JSON number")


def _check_tree(value: Any) -> None:
    """Depth and text of a parsed body, iteratively (a recursive walk would be the problem it checks)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidResource(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels "
                                  f"(at {where[:200] or 'the top'})")
        if isinstance(node, dict):
            for key, item in node.items():
                _check_text(key, f"{where}.{_safe(key)}" if where else _safe(key), "a property name")
                stack.append((item, f"{where}.{_safe(key)}" if where else _safe(key), depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, where, "a string")


def _check_text(text: str, where: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidResource(f"the request body has {what} with a lone surrogate (\\u{code:04x}) at "
                              f"{where[:200] or 'the top'}: not valid Unicode, so it cannot be stored") from None


def _safe(key: str) -> str:
    """A property name as it may appear in an error: printable, short and valid UTF-8."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")[:60]
