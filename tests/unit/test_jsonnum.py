"""`common.jsonnum.loads` reads what `json.loads` reads, in the same encodings, with the same errors,
and keeps each decimal as written."""

from __future__ import annotations

import json

import pytest

from common.jsonnum import WrittenNumber, dumps, loads

TEXT = '{"systolic": 120, "weight": 22.40, "t": "2024-05-01T06:00:00Z", "n": [1.0e2, -0.010], "s": "caf\\u00e9"}'


@pytest.mark.parametrize("data", [
    TEXT,
    TEXT.encode(),
    bytearray(TEXT.encode()),
    TEXT.encode("utf-8-sig"),
    TEXT.encode("utf-16"),
    TEXT.encode("utf-16-le"),
    TEXT.encode("utf-16-be"),
    TEXT.encode("utf-32"),
    b"[22.40]",
    b" {\"a\": 1.50}",
    b"{}",
    "[]",
])
def test_loads_reads_what_json_loads_reads(data: str | bytes) -> None:
    assert loads(data) == json.loads(data)
    assert dumps(loads(data)) == dumps(json.loads(data, parse_float=WrittenNumber))


def test_decimals_keep_their_digits() -> None:
    body = loads(TEXT.encode())
    assert dumps(body["weight"]) == "22.40" and dumps(body["n"]) == "[1.0e2, -0.010]"
    assert type(body["systolic"]) is int


@pytest.mark.parametrize("data", ["\ufeff{}", b"{", "{", b"\x00\x00", "", b"", 5, None])
def test_loads_fails_as_json_loads_fails(data: object) -> None:
    with pytest.raises(Exception) as expected:
        json.loads(data)  # type: ignore[arg-type]
    with pytest.raises(type(expected.value)) as got:
        loads(data)  # type: ignore[arg-type]
    assert str(got.value) == str(expected.value)
