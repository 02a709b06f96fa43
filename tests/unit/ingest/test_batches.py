"""Splitting a body into device messages: one element or line each, poison kept to its own message."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.batches import split_messages


def test_an_array_is_split_into_its_elements_as_sent() -> None:
    body = b'[{"a": 1, "s": "x,]}"}, {"b": [1, {"c": "\\"]"}]},\n  {"d": null}]'
    assert split_messages(body) == [b'{"a": 1, "s": "x,]}"}', b'{"b": [1, {"c": "\\"]"}]}', b'{"d": null}']


def test_poison_elements_stay_single_messages_and_the_others_go_on() -> None:
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big = b'{"n": ' + b"9" * 5000 + b"}"
    surrogate = b'{"deviceId": "d\\ud800"}'
    good = b'{"deviceId": "d1"}'
    assert split_messages(b"[" + b", ".join([good, deep, big, surrogate, good]) + b"]") == [
        good, deep, big, surrogate, good]


def test_a_body_that_is_not_one_well_formed_array_is_kept_whole() -> None:
    for body in (b"[1, 2", b"[1,, 2]", b"[1, 2,]", b'["unterminated]', b"[1] trailing", b"[1]]"):
        assert split_messages(body) == [body], body
    assert split_messages(b"[]") == []


def test_json_lines_are_split_by_line() -> None:
    assert split_messages(b'{"a": 1}\n\n{"b": 2}\r\n{broken\n') == [b'{"a": 1}', b'{"b": 2}', b"{broken"]
    assert split_messages(b"   ") == [b"   "]


@settings(max_examples=60)
@given(st.lists(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                             lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                             max_leaves=8), max_size=6))
def test_any_json_array_splits_into_exactly_its_elements(items: list) -> None:
    assert [json.loads(m) for m in split_messages(json.dumps(items, indent=1).encode())] == items
