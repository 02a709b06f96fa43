"""Inputs that trip Python's own limits get specific dead-letter reasons, and can still be kept."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ingest.poison import lone_surrogate_path, payload_bytes, poison_error, storable_text


def raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_each_limit_has_its_own_reason() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert poison_error(raised(lambda: json.loads(deep)), "decoding").reason == "nesting_too_deep"
    assert poison_error(raised(lambda: json.loads(b"9" * 5000)), "decoding").reason == "number_too_large"
    assert poison_error(raised(lambda: "\ud800".encode()), "storing").reason == "invalid_unicode"
    late = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-23, minutes=-59)))
    error = poison_error(raised(lambda: late.astimezone(UTC)), "parsing the timestamp")
    assert error.reason == "value_out_of_range" and "parsing the timestamp" in error.detail

    from zoneinfo import ZoneInfo

    assert poison_error(raised(lambda: ZoneInfo("A" * 100_000)), "zone").reason == "invalid_time_zone"
    assert poison_error(KeyError("x"), "mapping").reason == "unprocessable_value"


def test_a_lone_surrogate_is_found_by_its_path_and_a_valid_pair_is_not() -> None:
    body = json.dumps({"a": [1, {"deviceId": "d\ud800"}]})
    assert lone_surrogate_path(body.encode(), json.loads(body)) == "$.a[1].deviceId"
    pair = json.dumps({"emoji": "\U0001f600"})  # escaped as a surrogate *pair*: valid
    assert lone_surrogate_path(pair.encode(), json.loads(pair)) is None
    assert storable_text("x\udc80y") == "x\\udc80y" and storable_text("ok") == "ok"


def test_payloads_the_json_encoder_refuses_are_kept_losslessly_with_a_note() -> None:
    big = 10**5000
    body, note = payload_bytes({"n": big, "s": "ok"})
    assert json.loads(body) == {"n": hex(big), "s": "ok"} and "hexadecimal" in note
    deep: list = []
    for _ in range(sys.getrecursionlimit() + 100):
        deep = [deep]
    body, note = payload_bytes({"deep": deep})
    assert body.startswith(b'{"deep":[[[') and body.count(b"[") == sys.getrecursionlimit() + 101
    assert payload_bytes({"a": 1}) == (b'{"a": 1}', None)
