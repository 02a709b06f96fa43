"""Generated request bodies against the running local server: no answer is ever a 5xx.

Bodies go to the FHIR facade (create, update, transaction, form search), the Event Grid webhook
and the ingest route,
over real HTTP. Bounded and derandomized, so the suite stays fast and CI repeatable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime.http_server import running_server
from tests.support.pipeline import add_patient, make_host

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text with lone surrogates mixed in: json.dumps writes them as "\udXXX" escapes, as an attacker would.
TEXT = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=30)
ODD_TIMES = st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-13-45", "",
                             "2026-11-20T07:30:00Z", "2026-11-20", "x" * 300, "2026-11-20T07:30:00+99:99"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT | ODD_TIMES
           | st.integers(min_value=10**20, max_value=10**40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=20)
RESOURCE_TYPES = st.sampled_from(["Observation", "Patient", "Device", "Basic", "Bundle", "Task", "X", "", None])


@st.composite
def resources(draw: st.DrawFn) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": draw(RESOURCE_TYPES)}
    for name in draw(st.lists(st.sampled_from(
            ["id", "status", "code", "subject", "effectiveDateTime", "valueQuantity", "identifier", "meta",
             "component", "issued", "device", "text", "active", "telecom", "entry"]), max_size=6, unique=True)):
        resource[name] = draw(JSON | ODD_TIMES | st.fixed_dictionaries({"reference": TEXT}))
    return resource


@st.composite
def bundles(draw: st.DrawFn) -> dict[str, Any]:
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        entry: dict[str, Any] = {"resource": draw(resources() | JSON)}
        entry["request"] = draw(st.fixed_dictionaries({
            "method": st.sampled_from(["POST", "PUT", "DELETE", "GET", "PATCH", "", "X"]),
            "url": st.sampled_from(["Observation", "Observation/a", "Patient?identifier=x", "?", "", "a/b/c/d"]) | TEXT,
        }) | JSON)
        entries.append(entry)
    return {"resourceType": "Bundle", "type": draw(st.sampled_from(["transaction", "batch", "collection", "x"])),
            "entry": entries}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_bundle(depth: int) -> bytes:
    """A transaction whose entry is a Bundle of Bundles `depth` deep (written as text: json.dumps
    itself would recurse too deep)."""
    inner = '{"resourceType":"Bundle","type":"collection","entry":[{"resource":' * depth
    inner += '{"resourceType":"Basic"}' + "}]}" * depth
    return ('{"resourceType":"Bundle","type":"transaction","entry":[{"resource":' + inner
            + ',"request":{"method":"POST","url":"Bundle"}}]}').encode()


BODIES = (st.binary(max_size=600)
          | JSON.map(lambda v: json.dumps(v).encode())
          | resources().map(lambda v: json.dumps(v).encode())
          | bundles().map(lambda v: json.dumps(v).encode())
          | st.integers(1, 3000).map(_nested))

POISON = [
    _nested(5000),                                                        # RecursionError in json
    b'{"resourceType":"Observation","valueInteger":' + b"9" * 5000 + b"}",  # int over 4300 digits
    b'{"resourceType":"Observation","status":"final","code":{"text":"\\ud800"}}',  # lone surrogate
    _nested_bundle(400),                                                  # a deeply nested Bundle
    b'{"resourceType":"Observation","valueQuantity":{"value":1e999}}',     # a float out of range
    b'{"resourceType":"Observation","valueQuantity":{"value":NaN}}',
]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz-data")
    host = make_host(data_dir, local_token=TOKEN)
    host.acquire()
    add_patient(host.services, "p1")
    with running_server(host, TOKEN) as base:
        yield base
    host.release()
    host.services.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, headers=AUTH) as c:
        yield c


def _fhir_requests(url: str, body: bytes) -> list[tuple[str, str, dict[str, str]]]:
    fhir = {"Content-Type": "application/fhir+json"}
    return [("POST", f"{url}/fhir/Observation", fhir), ("POST", f"{url}/fhir", fhir),
            ("PUT", f"{url}/fhir/Patient/p9", fhir),
            ("POST", f"{url}/fhir/Observation/_search", {"Content-Type": "application/x-www-form-urlencoded"}),
            ("POST", f"{url}/api/events/fhir", {"Content-Type": "application/json"})]


@pytest.mark.parametrize("body", POISON, ids=["deep-nesting", "huge-int", "lone-surrogate", "nested-bundle",
                                              "float-overflow", "nan"])
def test_poison_bodies_are_a_400_with_an_outcome_that_says_why(url: str, client: httpx.Client, body: bytes) -> None:
    resp = client.post(f"{url}/fhir/Observation", content=body, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 400, resp.text[:300]
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    assert any(word in text for word in ("deeper than", "digits", "lone surrogate", "out of range", "NaN")), text
    transaction = client.post(f"{url}/fhir", content=body, headers={"Content-Type": "application/fhir+json"})
    assert transaction.status_code == 400


@FUZZ
@given(body=BODIES)
@example(body=POISON[0]).via("poison")
@example(body=POISON[1]).via("poison")
@example(body=POISON[2]).via("poison")
@example(body=POISON[3]).via("poison")
def test_no_fuzzed_body_gets_a_5xx_from_the_fhir_facade(url: str, client: httpx.Client, body: bytes) -> None:
    for method, target, headers in _fhir_requests(url, body):
        resp = client.request(method, target, content=body, headers=headers)
        assert resp.status_code < 500, (method, target, resp.status_code, resp.text[:300])
        if resp.status_code >= 400 and "/fhir" in target and "/api/" not in target:
            assert resp.json()["resourceType"] == "OperationOutcome"


# The route gets generated bodies and, among them, the handler's poison classes (timestamps past
# year 9999 with their offset, lone surrogates; integers over 4300 digits and deep nesting, which
# json.dumps cannot write, come from INGEST_POISON below).
INGEST_TIMES = st.sampled_from(["2026-13-45", "", "2026-11-20T07:30:00Z", "2026-11-20", "x" * 300,
                                "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
INGEST_TEXT = st.text(max_size=30) | st.just("\ud800")
INGEST_SCALARS = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | INGEST_TEXT
INGEST_JSON = st.recursive(INGEST_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(INGEST_TEXT, inner, max_size=4), max_leaves=20)
DEVICE_MESSAGES = st.fixed_dictionaries(
    {"deviceId": st.sampled_from(["p1-dev", "unknown"]) | INGEST_TEXT,
     "type": st.sampled_from(["heart_rate", "spo2"]) | INGEST_TEXT,
     "time": INGEST_TIMES, "values": st.dictionaries(st.sampled_from(["bpm", "percent"]), INGEST_SCALARS, max_size=2)},
    optional={"patientId": st.just("p1") | INGEST_TEXT})
INGEST_BODIES = (st.binary(max_size=600)
                 | INGEST_JSON.map(lambda v: json.dumps(v).encode())
                 | st.lists(DEVICE_MESSAGES, max_size=5).map(lambda v: json.dumps(v).encode())
                 | st.lists(DEVICE_MESSAGES, max_size=5).map(lambda v: b"\n".join(json.dumps(m).encode() for m in v)))


@FUZZ
@given(body=INGEST_BODIES)
def test_no_fuzzed_body_gets_a_5xx_from_the_ingest_route(url: str, client: httpx.Client, body: bytes) -> None:
    resp = client.post(f"{url}/api/ingest", content=body)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])


INGEST_POISON = [
    b'{"deviceId":"p1-dev","type":"heart_rate","time":"9999-12-31T23:59:59-23:59","values":{"bpm":60}}',
    b'{"deviceId":"\\ud800","type":"heart_rate","time":"2026-11-20T07:30:00Z","values":{"bpm":60}}',
    b'{"deviceId":"p1-dev","type":"heart_rate","time":"2026-11-20T07:30:00Z","values":{"bpm":' + b"9" * 5000 + b"}}",
    _nested(5000),
]


@pytest.mark.parametrize("body", INGEST_POISON, ids=["time-overflow", "lone-surrogate", "huge-int", "deep-nesting"])
def test_ingest_poison_bodies_are_dead_lettered_not_a_5xx(url: str, client: httpx.Client, body: bytes) -> None:
    resp = client.post(f"{url}/api/ingest", content=body)
    assert resp.status_code < 500, resp.text[:300]
    report = resp.json()
    assert (report["received"], report["dead_lettered"], report["unaccounted"]) == (1, 1, 0), report
