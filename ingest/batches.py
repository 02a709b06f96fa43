"""Splitting a request or file body into device messages, without parsing the messages.

A body is a JSON array (one message per element) or JSON Lines (one message per non-empty line).
The array is split by a scanner that only tracks strings and bracket depth, so one element that
cannot be parsed (nested past the parser's recursion limit, an integer too long to convert, a lone
surrogate) stays one message: the handler dead-letters it with its reason and the other elements go
on. Each element is handed on as the bytes that were sent, so a dead letter keeps what arrived.
"""

from __future__ import annotations

import re

# A JSON string (escapes included), a bare quote (an unterminated string), or a structural character.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},]', re.DOTALL)


def split_messages(body: bytes) -> list[bytes]:
    """A JSON array becomes one message per element; otherwise one message per non-empty line.

    A body that is not a well-formed array is kept whole, so the handler dead-letters it with the
    parser's reason."""
    text = body.strip()
    if text.startswith(b"["):
        items = array_items(text)
        return [body] if items is None else items
    lines = [line for line in body.splitlines() if line.strip()]
    return lines or [body]


def array_items(text: bytes) -> list[bytes] | None:
    """The raw bytes of each top-level element of the JSON array `text`, or None when `text` is not
    one array (unbalanced brackets, an unterminated string, an empty element, trailing content)."""
    depth = 0
    items: list[bytes] = []
    start = 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token.startswith(b'"'):
            if len(token) == 1:
                return None
            continue
        if token in (b"[", b"{"):
            depth += 1
            continue
        if token == b",":
            if depth == 1:
                if not _element(text, start, match.start(), items):
                    return None
                start = match.end()
            continue
        depth -= 1  # "]" or "}"
        if depth < 0:
            return None
        if depth == 0:
            if text[match.end():].strip():
                return None
            last = text[start:match.start()].strip()
            if last:
                items.append(last)
            elif items:  # "[1, 2,]"
                return None
            return items
    return None


def _element(text: bytes, start: int, end: int, items: list[bytes]) -> bool:
    item = text[start:end].strip()
    if not item:
        return False
    items.append(item)
    return True
