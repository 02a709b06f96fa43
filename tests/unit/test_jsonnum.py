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


def test_the_shared_decoder_gives_each_thread_its_own_document() -> None:
    """Handlers decode on several threads through one module-level decoder: its scanner keeps no
    state between calls that one thread's document could leak into another's."""
    from concurrent.futures import ThreadPoolExecutor

    docs = [json.dumps({f"k{i}": [i + 0.5, {"v": f"{i}.{i:02d}0", "n": i}], "s": "x" * i}) for i in range(64)]
    want = [json.loads(doc) for doc in docs]

    def decode_all(offset: int) -> bool:
        order = docs[offset:] + docs[:offset]
        return all(loads(doc.encode() if i % 2 else doc) == want[(offset + i) % len(docs)]
                   for _ in range(50) for i, doc in enumerate(order))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(decode_all, range(0, 64, 8)))
