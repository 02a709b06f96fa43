"""The remote sources' HTTP client: tenacity retries 429/503 after the server's Retry-After (seconds or an
HTTP date), backs off on 502/504 and connection failures, gives up with a clear error, and never retries
or leaks what is not transient (a 4xx, the query, a token)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate

import httpx
import pytest

from analytics.export.http import FhirHttp, RemoteError
from common.retry_after import retry_after_s


def _client(answers: list, waits: list[float], attempts: int = 6) -> tuple[FhirHttp, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = FhirHttp("https://fhir.example.test/r4", token=lambda: "tok-123", attempts=attempts,
                    sleep=waits.append, client=httpx.Client(transport=httpx.MockTransport(handle)))
    return http, seen


def test_429_and_503_wait_what_retry_after_says() -> None:
    waits: list[float] = []
    http, seen = _client([httpx.Response(429, headers={"Retry-After": "7"}),
                          httpx.Response(503, headers={"Retry-After": "2"}),
                          httpx.Response(200, json={"resourceType": "Bundle"})], waits)
    assert http.json("Observation", params=[("_count", "5")])["resourceType"] == "Bundle"
    assert waits == [7.0, 2.0] and len(seen) == 3
    assert all(r.headers["Authorization"] == "Bearer tok-123" for r in seen)


def test_retry_after_as_an_http_date_and_a_cap() -> None:
    at_1000 = lambda: datetime.fromtimestamp(1000.0, UTC)  # noqa: E731
    assert retry_after_s({"Retry-After": formatdate(1000.0 + 30, usegmt=True)}, now=at_1000) == pytest.approx(30.0)
    assert retry_after_s({"Retry-After": "soon"}) is None and retry_after_s({}) is None
    waits: list[float] = []
    http, _ = _client([httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200, json={})], waits)
    http.get("metadata")
    assert waits == [60.0]  # capped at max_wait_s


def test_gateway_errors_and_connection_failures_back_off_then_give_up_clearly() -> None:
    waits: list[float] = []
    http, seen = _client([httpx.ConnectError("refused"), httpx.Response(502), httpx.Response(504),
                          httpx.Response(503)], waits, attempts=4)
    with pytest.raises(RemoteError, match=r"GET /r4/Patient: HTTP 503 \(gave up after retries\)") as err:
        http.get("Patient", params=[("name", "Zebulon")])
    assert len(seen) == 4 and len(waits) == 3 and all(0 <= w <= 60 for w in waits)
    assert "Zebulon" not in str(err.value)  # the query can name a patient


def test_a_client_error_fails_at_once_with_the_servers_diagnostics_and_no_token() -> None:
    waits: list[float] = []
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad _lastUpdated for tok-123"}]}
    http, seen = _client([httpx.Response(400, json=outcome)], waits)
    with pytest.raises(RemoteError, match=r"HTTP 400: bad _lastUpdated for \[redacted\]") as err:
        http.get("Observation")
    assert err.value.status == 400 and waits == [] and len(seen) == 1
