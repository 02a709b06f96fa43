"""The FHIR HTTP adapter's retry policy (tenacity in fhirstore/http_transport.py, docs/decisions.md
"Retries"), against scripted answers (httpx.MockTransport): attempts counted, Retry-After honoured and
capped, a POST that may have been applied never sent twice, a 401 answered with one fresh token."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from fhirstore.errors import ServerError, TooManyRequests, Unauthorized
from fhirstore.http_store import HttpFhirStore
from tests.unit.test_http_store import BASE, FakeCredential, Script, fhir, make_store, obs


def test_every_attempt_is_counted_logged_and_named_in_the_final_error(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(*[httpx.ConnectError("refused")] * 4)
    store, slept = make_store(script, max_retries=3)
    with caplog.at_level(logging.WARNING, logger="fhirstore.http_store"), pytest.raises(ServerError) as info:
        store.read("Observation", "o1")
    assert len(script.requests) == 4 and len(slept) == 3
    assert "after 4 attempt(s)" in str(info.value) and info.value.status == 503
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert [m.split("retry ")[1].split(" ")[0] for m in retries] == ["1/3", "2/3", "3/3"]
    assert all("ConnectError" in m for m in retries)


def test_max_retries_zero_sends_once() -> None:
    script = Script(fhir(503))
    store, slept = make_store(script, max_retries=0)
    with pytest.raises(ServerError):
        store.read("Observation", "o1")
    assert len(script.requests) == 1 and slept == []


def test_a_timeout_names_its_attempts_and_maps_to_504() -> None:
    script = Script(*[httpx.ReadTimeout("slow")] * 2)
    store, _ = make_store(script, max_retries=1)
    with pytest.raises(ServerError) as info:
        store.read("Observation", "o1")
    assert info.value.status == 504 and "timed out after 2 attempt(s)" in str(info.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Retry-After": "4"}, 4.0), ({"retry-after-ms": "1500"}, 1.5), ({"x-ms-retry-after-ms": "250"}, 0.25)],
)
def test_503_waits_what_the_server_asks(headers: dict[str, str], expected: float) -> None:
    script = Script(fhir(503, **headers), fhir(200, obs()))
    store, slept = make_store(script)
    store.read("Observation", "o1")
    assert slept == [expected]


def test_retry_after_is_capped_at_backoff_max() -> None:
    script = Script(fhir(429, **{"Retry-After": "3600"}), fhir(200, obs()))
    store, slept = make_store(script, backoff_max=12.0)
    store.read("Observation", "o1")
    assert slept == [12.0]


def test_retry_after_on_a_502_is_not_a_server_hint_so_backoff_applies() -> None:
    # RFC 9110 §10.2.3 defines Retry-After for 503 and 3xx; Vigil reads it on 429 and 503 only.
    script = Script(fhir(502, **{"Retry-After": "20"}), fhir(200, obs()))
    store, slept = make_store(script, backoff_base=0.5)
    store.read("Observation", "o1")
    assert 0.25 <= slept[0] <= 0.5


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    script = Script(fhir(429, **{"Retry-After": "soon"}), fhir(200, obs()))
    store, slept = make_store(script, backoff_base=2.0)
    store.read("Observation", "o1")
    assert 1.0 <= slept[0] <= 2.0


def test_throttled_to_the_end_is_too_many_requests_with_every_attempt_sent() -> None:
    script = Script(*[fhir(429, **{"Retry-After": "1"})] * 3)
    store, slept = make_store(script, max_retries=2)
    with pytest.raises(TooManyRequests):
        store.create(obs())  # a plain create: the server did not act on a 429, so it may repeat
    assert script.calls == ["POST /Observation"] * 3 and slept == [1.0, 1.0]


def test_a_plain_create_is_sent_once_after_a_read_timeout_but_a_conditional_one_repeats() -> None:
    plain = Script(httpx.ReadTimeout("slow"), fhir(201, obs("new")))
    store, slept = make_store(plain)
    with pytest.raises(ServerError):
        store.create(obs())
    assert plain.calls == ["POST /Observation"] and slept == []

    conditional = Script(httpx.ReadTimeout("slow"), fhir(201, obs("new")))
    store, slept = make_store(conditional)
    assert store.create(obs(), if_none_exist="identifier=urn:vigil:reading|abc").outcome == "created"
    assert conditional.calls == ["POST /Observation"] * 2 and len(slept) == 1


def test_a_transaction_is_retried_only_when_it_was_never_sent() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    script = Script(httpx.ConnectError("refused"), httpx.PoolTimeout("pool"), fhir(200, answer))
    store, slept = make_store(script)
    assert store.transaction(bundle)["type"] == "transaction-response"
    assert len(script.requests) == 3 and len(slept) == 2


def test_the_401_refresh_is_spent_once_per_request_even_across_retries() -> None:
    credential = FakeCredential("revoked", "fresh")
    script = Script(fhir(401), fhir(503), fhir(401), fhir(200, obs()))
    store, slept = make_store(script, credential=credential)
    with pytest.raises(Unauthorized):
        store.read("Observation", "o1")
    auth = [r.headers["Authorization"] for r in script.requests]
    assert auth == ["Bearer revoked", "Bearer fresh", "Bearer fresh"]
    assert len(slept) == 1  # the 503 waited; neither 401 did
    assert len(credential.scopes) == 2


def test_the_401_refresh_does_not_use_up_a_retry() -> None:
    credential = FakeCredential("revoked", "fresh")
    script = Script(fhir(401), fhir(200, obs()))
    store, slept = make_store(script, credential=credential, max_retries=0)
    assert store.read("Observation", "o1")["id"] == "o1"
    assert slept == []


def test_a_401_without_a_credential_fails_at_once() -> None:
    script = Script(fhir(401), fhir(200, obs()))
    store, slept = make_store(script)
    with pytest.raises(Unauthorized):
        store.read("Observation", "o1")
    assert len(script.requests) == 1 and slept == []


def test_concurrent_requests_count_their_own_attempts() -> None:
    """One transport serves many threads: each request's attempts are its own."""
    failures = {"/fhir/Observation/flaky": 2, "/fhir/Observation/down": 99}
    lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            left = failures.get(request.url.path, 0)
            failures[request.url.path] = left - 1
        if left > 0:
            raise httpx.ConnectError("refused")
        return fhir(200, obs(request.url.path.rsplit("/", 1)[1]))

    client = httpx.Client(transport=httpx.MockTransport(answer))
    store = HttpFhirStore(BASE, client=client, max_retries=3, sleep=lambda s: time.sleep(0.005))
    results: dict[str, object] = {}

    def run(id_: str) -> None:
        try:
            results[id_] = store.read("Observation", id_)["id"]
        except ServerError as exc:
            results[id_] = str(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in ("flaky", "down", "fine")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results["flaky"] == "flaky" and results["fine"] == "fine"
    assert "after 4 attempt(s)" in str(results["down"])


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_error_on_a_plain_create_is_not_retried_it_may_have_been_applied(status: int) -> None:
    script = Script(fhir(status, **{"Retry-After": "1"}), fhir(201, obs("twice")))
    store, slept = make_store(script)
    with pytest.raises(ServerError) as info:
        store.create(obs())
    assert info.value.status == status
    assert script.calls == ["POST /Observation"] and slept == []
