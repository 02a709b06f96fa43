"""JSON with numbers kept as written: a FHIR decimal `22.40` stays `22.40`, not `22.4`.

FHIR R4 (Datatypes, `decimal`): "the precision of the decimal value has significance: e.g. 0.010 is
regarded as different to 0.01, and the original precision should be preserved". Python's `json`
parses `22.40` into the float 22.4 and writes it back as `22.4`.

`WrittenNumber` is a `float` that remembers the token it was read from. Everything that computes
with it (rules, plausibility ranges, unit conversion, JSONPath filters) sees an ordinary float, and
a result of arithmetic is a plain float again. `dumps` writes each one as its token through
simplejson's `RawJSON` ("an encoded JSON document for direct embedding in the output"); the
standard library's `json.dumps` still accepts a WrittenNumber and writes the float (`22.4`): a
serializer that does not know the type loses the trailing zero, never the value.

Use `loads` where JSON enters (device messages, stored resources) and `dumps` where resources
leave (the FHIR stores, the dry-run report).
"""

from __future__ import annotations

import json
from typing import Any

import simplejson
from simplejson import RawJSON


class WrittenNumber(float):
    """A JSON number with a fraction or an exponent, and the token it was written as (`text`)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> WrittenNumber:
        self = super().__new__(cls, text)
        self.text = text
        return self

    @property
    def has_exponent(self) -> bool:
        return "e" in self.text or "E" in self.text

    # Shown as written: validators that check a decimal's text (fhir.resources matches the FHIR
    # decimal regex against it) see the token, not the class.
    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (WrittenNumber, (self.text,))

    def __copy__(self) -> WrittenNumber:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> WrittenNumber:
        return self


def number(text: str) -> WrittenNumber:
    """A WrittenNumber for a decimal `text` in JSON number syntax (the caller checked it)."""
    return WrittenNumber(text)


# One decoder for every call: `json.loads(data, parse_float=...)` builds a new JSONDecoder (and its
# C scanner) per call, a fifth of the cost of decoding a small device message.
_DECODER = json.JSONDecoder(parse_float=WrittenNumber)


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads`, with numbers that have a fraction or an exponent as WrittenNumber (integers
    stay `int`: they are exact already). Same input rules as `json.loads`: bytes in UTF-8, -16 or
    -32 (detected as the standard library does), a str must not start with a byte order mark."""
    if type(data) is str:
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        return _DECODER.decode(data)
    if not isinstance(data, bytes | bytearray):
        return json.loads(data, parse_float=WrittenNumber)  # a str subclass, or the standard TypeError
    # An object or array whose second byte is not NUL is UTF-8 to `json.detect_encoding` (no byte
    # order mark starts with `{` or `[`): skip the detection for the common case.
    head = data[:2]
    encoding = "utf-8" if head[:1] in (b"{", b"[") and (len(head) < 2 or head[1]) else json.detect_encoding(data)
    return _DECODER.decode(data.decode(encoding, "surrogatepass"))


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps`-compatible (same keyword arguments), writing each WrittenNumber as written."""
    return simplejson.dumps(_raw(obj), **kwargs)


def _raw(value: Any) -> Any:
    """`value` with each WrittenNumber as a RawJSON of its token; containers without one are
    returned as they are (no copy). simplejson's C encoder checks floats before RawJSON, so the
    numbers are swapped out rather than written by a float subclass."""
    kind = type(value)
    if kind is WrittenNumber:
        return RawJSON(value.text)
    if kind is dict:
        out = None
        for key, item in value.items():
            new = _raw(item)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if kind is list:
        items = None
        for i, item in enumerate(value):
            new = _raw(item)
            if new is not item:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value
