"""Inputs that make Python itself fail, named as dead-letter reasons.

Some payloads are valid enough to reach the mapping engine or the store and then trip a limit of
the interpreter or a library, not a rule of Vigil's: JSON nested deeper than the parser's recursion
limit, integers longer than `sys.get_int_max_str_digits()` (4,300 digits by default, CPython's
guard against quadratic int/str conversion, https://docs.python.org/3/library/stdtypes.html#int-max-str-digits),
strings carrying a lone UTF-16 surrogate (allowed by the JSON grammar but not Unicode text:
RFC 8259 §8.2, forbidden by I-JSON, RFC 7493 §2.1; SQLite and UTF-8 encoders refuse them),
timestamps whose UTC instant falls outside years 1-9999 (`datetime` raises OverflowError), and
time-zone names the zone database cannot even look up (a 1 MB name makes `zoneinfo` raise OSError).

`poison_error` turns such an exception into a `MessageError` with a specific reason, so the message
is dead-lettered at its own boundary and the rest of its batch goes on. Details say what limit
was hit and where (the stage), never the value.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from ingest.templates.errors import MessageError

NESTING_TOO_DEEP = "nesting_too_deep"
NUMBER_TOO_LARGE = "number_too_large"
INVALID_UNICODE = "invalid_unicode"
VALUE_OUT_OF_RANGE = "value_out_of_range"
INVALID_TIME_ZONE = "invalid_time_zone"
UNPROCESSABLE = "unprocessable_value"

POISON_REASONS: dict[str, str] = {
    NESTING_TOO_DEEP: "the message nests arrays/objects deeper than can be processed",
    NUMBER_TOO_LARGE: "an integer has more digits than Python converts (int_max_str_digits)",
    INVALID_UNICODE: "a string holds a lone UTF-16 surrogate, which is not Unicode text",
    VALUE_OUT_OF_RANGE: "a date or number is outside the representable range",
    INVALID_TIME_ZONE: "a time-zone name the zone database cannot look up",
    UNPROCESSABLE: "a value made processing fail in a way no other reason covers",
}

# The exceptions a *message* can cause. Anything else (a sqlite3 or FHIR error, a full disk) is the
# system's problem, not the message's: it propagates so the batch is retried, never dead-lettered.
POISON = (RecursionError, ValueError, OverflowError, OSError, TypeError, KeyError, IndexError, AttributeError)
# Where the work touches the store (identity lookups, merges, writes) an OSError may be the network's
# or the disk's: there it propagates (the batch is retried) instead of parking the message.
POISON_AT_STORE = (RecursionError, ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError)

_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def poison_error(exc: BaseException, stage: str) -> MessageError:
    """The dead-letter reason and detail for an exception raised while `stage` (e.g. "decoding JSON",
    "mapping", "writing to the FHIR store") processed one message."""
    name = type(exc).__name__
    if isinstance(exc, RecursionError):
        return MessageError(NESTING_TOO_DEEP, f"the message nests deeper than Python's recursion limit "
                                              f"({sys.getrecursionlimit()}) allows while {stage}")
    if isinstance(exc, UnicodeError):
        return MessageError(INVALID_UNICODE, f"a string holds a lone UTF-16 surrogate, which cannot be encoded "
                                             f"as UTF-8 ({name} while {stage}; RFC 8259 §8.2)")
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return MessageError(NUMBER_TOO_LARGE, f"an integer has more than {sys.get_int_max_str_digits()} digits "
                                              f"(Python's int_max_str_digits limit) while {stage}")
    if isinstance(exc, OverflowError):
        return MessageError(VALUE_OUT_OF_RANGE, f"a date or number is outside the range Python represents "
                                                f"(a timestamp must fall in years 1-9999 UTC) while {stage}")
    if isinstance(exc, OSError) and _raised_in(exc, "zoneinfo"):
        return MessageError(INVALID_TIME_ZONE, f"a time-zone name could not be looked up in the zone database "
                                               f"({name} while {stage}; expected an IANA name such as Europe/Paris)")
    return MessageError(UNPROCESSABLE, f"{name} while {stage}")


def _raised_in(exc: BaseException, module: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if module in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def lone_surrogate_path(body: bytes, value: Any) -> str | None:
    """The JSON path of the first string (key or value) holding a lone surrogate, or None.

    Raw surrogate bytes are invalid UTF-8 (refused by the JSON decoder), so a lone surrogate can only
    arrive escaped (`\\ud800`): bodies without such an escape are not walked at all."""
    if _ESCAPED_SURROGATE.search(body) is None:
        return None
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:  # iterative: the value may be nested to the parser's limit
        path, node = stack.pop()
        if isinstance(node, str):
            if _has_lone_surrogate(node):
                return path
        elif isinstance(node, dict):
            for key, child in node.items():
                if _has_lone_surrogate(key):
                    return path + ".<key>"
                stack.append((f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]", child))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(node))
    return None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def storable_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates become `\\udXXX` escapes (nothing else changes)."""
    if not _has_lone_surrogate(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def payload_bytes(payload: Any) -> tuple[bytes, str | None]:
    """A decoded payload (what an Event Grid binding hands over) as JSON bytes to keep in a dead
    letter, and a note when it could not be kept as-is: integers longer than Python converts to
    decimal are kept in hexadecimal ("0x..."), and nesting past the encoder's recursion limit is
    written by an iterative encoder (the same JSON)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload), None
    try:
        return json.dumps(payload, default=str).encode(), None
    except (ValueError, RecursionError):
        pass
    notes: set[str] = set()
    return _iterative_json(payload, notes).encode(), "; ".join(sorted(notes)) or None


def _iterative_json(value: Any, notes: set[str]) -> str:
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("{")]
            for n, (k, v) in enumerate(item.items()):
                parts += [_Raw(("," if n else "") + json.dumps(str(k)) + ":"), v]
            stack.extend(reversed([*parts, _Raw("}")]))
        elif isinstance(item, list | tuple):
            parts = [_Raw("[")]
            for n, v in enumerate(item):
                parts += ([_Raw(",")] if n else []) + [v]
            stack.extend(reversed([*parts, _Raw("]")]))
        elif isinstance(item, bool) or item is None or isinstance(item, float | str):
            out.append(json.dumps(item))
        elif isinstance(item, int):
            try:
                out.append(str(item))
            except ValueError:
                notes.add("integers too long for decimal are kept in hexadecimal")
                out.append(json.dumps(hex(item)))
        else:
            out.append(json.dumps(str(item)))
    return "".join(out)


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text
