"""HttpFhirStore against scripted HTTP answers (httpx.MockTransport): retries, auth, error mapping."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from azure.core.credentials import AccessToken

from fhirstore.errors import (
    FhirError,
    InvalidResource,
    PreconditionFailed,
    ResourceGone,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from fhirstore.http_store import HttpFhirStore
from fhirstore.paging import TooManyPages, search_all
from fhirstore.port import SearchResult

BASE = "https://ws-fhir.fhir.azurehealthcareapis.com/fhir"
Reply = httpx.Response | Exception


def obs(id_: str = "o1", vid: str = "1", value: float = 120.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "meta": {"versionId": vid, "lastUpdated": "2024-05-01T10:00:00Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": value, "unit": "mm[Hg]"},
    }


def fhir(status: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(
        status, content=content, headers={"Content-Type": "application/fhir+json", **headers}
    )


def outcome(diagnostics: str, code: str = "invalid") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class Script:
    """Answers requests in order from a list of replies and records what was sent."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    @property
    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path.removeprefix('/fhir')}" for r in self.requests]


class FakeCredential:
    def __init__(self, *tokens: str, lifetime_s: int = 3600) -> None:
        self.tokens = list(tokens)
        self.lifetime_s = lifetime_s
        self.scopes: list[tuple[str, ...]] = []
        self.claims: list[str | None] = []

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        self.claims.append(claims)
        return AccessToken(self.tokens.pop(0), int(time.time()) + self.lifetime_s)


def make_store(script: Script, **kwargs: Any) -> tuple[HttpFhirStore, list[float]]:
    slept: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(script))
    store = HttpFhirStore(BASE, client=client, sleep=slept.append, **kwargs)
    return store, slept


# -- retries ------------------------------------------------------------------------------------


def test_429_honours_retry_after_seconds_then_succeeds() -> None:
    script = Script(fhir(429, outcome("throttled", "throttled"), **{"Retry-After": "3"}), fhir(200, obs()))
    store, slept = make_store(script)
    assert store.read("Observation", "o1")["id"] == "o1"
    assert slept == [3.0]
    assert script.calls == ["GET /Observation/o1"] * 2


def test_429_retry_after_http_date_is_honoured_and_capped() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    much_later = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    script = Script(
        fhir(429, **{"Retry-After": soon}), fhir(429, **{"Retry-After": much_later}), fhir(200, obs())
    )
    store, slept = make_store(script, backoff_max=30.0)
    store.read("Observation", "o1")
    assert 8.0 <= slept[0] <= 10.0
    assert slept[1] == 30.0


def test_503_twice_then_200_backs_off_exponentially_with_jitter() -> None:
    script = Script(fhir(503), fhir(503), fhir(200, obs()))
    store, slept = make_store(script, backoff_base=0.5)
    assert store.read("Observation", "o1")["id"] == "o1"
    assert len(slept) == 2
    assert 0.25 <= slept[0] <= 0.5
    assert 0.5 <= slept[1] <= 1.0


def test_backoff_never_exceeds_backoff_max() -> None:
    script = Script(*[fhir(502)] * 6, fhir(200, obs()))
    store, slept = make_store(script, max_retries=6, backoff_base=1.0, backoff_max=3.0)
    store.read("Observation", "o1")
    assert max(slept) <= 3.0
    assert slept[-1] >= 1.5  # the cap halves at worst through jitter, never collapses to zero


@pytest.mark.parametrize(
    ("status", "error"), [(503, ServerError), (504, ServerError), (429, TooManyRequests)]
)
def test_retries_exhausted_raise_the_typed_error(status: int, error: type[FhirError]) -> None:
    script = Script(*[fhir(status, outcome("busy", "transient"))] * 3)
    store, slept = make_store(script, max_retries=2)
    with pytest.raises(error) as info:
        store.read("Observation", "o1")
    assert info.value.status == status
    assert len(script.requests) == 3
    assert len(slept) == 2
    assert "read Observation/o1" in str(info.value) and "busy" in str(info.value)


def test_transport_errors_are_retried_for_reads_then_surface_as_server_error() -> None:
    script = Script(httpx.ReadTimeout("read timed out"), httpx.ConnectError("refused"), fhir(200, obs()))
    store, _ = make_store(script)
    assert store.read("Observation", "o1")["id"] == "o1"

    failing = Script(*[httpx.ConnectError("refused")] * 3)
    store, _ = make_store(failing, max_retries=2)
    with pytest.raises(ServerError) as info:
        store.read("Observation", "o1")
    assert info.value.status == 503
    assert "3 attempt(s)" in str(info.value)


def test_500_is_not_retried_even_for_a_read() -> None:
    script = Script(fhir(500, outcome("boom", "exception")))
    store, slept = make_store(script)
    with pytest.raises(ServerError):
        store.read("Observation", "o1")
    assert len(script.requests) == 1 and slept == []


# -- non-idempotent create -----------------------------------------------------------------------


@pytest.mark.parametrize("reply", [fhir(500), fhir(503), fhir(502), httpx.ReadTimeout("timed out")])
def test_plain_create_is_not_retried_once_the_server_may_have_processed_it(reply: Reply) -> None:
    script = Script(reply, fhir(201, obs()))
    store, slept = make_store(script)
    with pytest.raises(ServerError):
        store.create(obs())
    assert script.calls == ["POST /Observation"]
    assert slept == []


@pytest.mark.parametrize(
    "reply", [fhir(429, **{"Retry-After": "1"}), httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")]
)
def test_plain_create_is_retried_when_the_server_cannot_have_processed_it(reply: Reply) -> None:
    script = Script(reply, fhir(201, obs("new")))
    store, _ = make_store(script)
    result = store.create(obs())
    assert (result.outcome, result.id) == ("created", "new")
    assert script.calls == ["POST /Observation"] * 2


def test_conditional_create_is_retried_on_503() -> None:
    script = Script(fhir(503), fhir(201, obs("new")))
    store, _ = make_store(script)
    result = store.create(obs(), if_none_exist="identifier=urn:vigil:reading|abc")
    assert result.outcome == "created"
    assert len(script.requests) == 2
    assert all(r.headers["If-None-Exist"] == "identifier=urn:vigil:reading|abc" for r in script.requests)


# -- create / read / delete mapping --------------------------------------------------------------


def test_create_sends_fhir_json_without_id_and_maps_201_and_200() -> None:
    script = Script(fhir(201, obs("srv1", "1")), fhir(200, obs("srv1", "1")))
    store, _ = make_store(script)
    created = store.create(obs("client-chosen"))
    exists = store.create(obs("client-chosen"), if_none_exist="identifier=x|1")
    assert (created.outcome, created.id, created.version_id, created.wrote) == ("created", "srv1", "1", True)
    assert (exists.outcome, exists.id, exists.wrote) == ("exists", "srv1", False)
    first = script.requests[0]
    assert first.headers["Content-Type"] == "application/fhir+json"
    assert first.headers["Prefer"] == "return=representation"
    assert "If-None-Exist" not in first.headers
    assert "id" not in json.loads(first.content)


def test_create_without_representation_fetches_the_location() -> None:
    location = f"{BASE}/Observation/srv9/_history/1"
    script = Script(fhir(201, Location=location, ETag='W/"1"'), fhir(200, obs("srv9", "1")))
    store, _ = make_store(script)
    result = store.create(obs())
    assert (result.id, result.version_id, result.resource["id"]) == ("srv9", "1", "srv9")
    assert script.calls == ["POST /Observation", "GET /Observation/srv9/_history/1"]


def test_read_of_deleted_resource_is_resource_gone() -> None:
    script = Script(fhir(410, outcome("Resource was deleted", "deleted")))
    store, _ = make_store(script)
    with pytest.raises(ResourceGone, match="Resource was deleted"):
        store.read("Observation", "o1")


def test_vread_path() -> None:
    script = Script(fhir(200, obs("o1", "2")))
    store, _ = make_store(script)
    assert store.vread("Observation", "o1", "2")["meta"]["versionId"] == "2"
    assert script.calls == ["GET /Observation/o1/_history/2"]


def test_delete_maps_deleted_and_gone() -> None:
    script = Script(fhir(200, obs()), fhir(204, ETag='W/"2"'), fhir(410), fhir(404))
    store, _ = make_store(script)
    deleted = store.delete("Observation", "o1")
    assert (deleted.outcome, deleted.version_id) == ("deleted", "2")
    assert store.delete("Observation", "o1").outcome == "gone"
    assert store.delete("Observation", "never").outcome == "gone"
    # Nothing there: no DELETE sent (servers would answer 204 and hide that nothing happened).
    assert script.calls == [
        "GET /Observation/o1",
        "DELETE /Observation/o1",
        "GET /Observation/o1",
        "GET /Observation/never",
    ]


def test_bad_ids_are_rejected_before_any_request() -> None:
    script = Script()
    store, _ = make_store(script)
    with pytest.raises(InvalidResource, match="Observation id"):
        store.read("Observation", "../metadata")
    with pytest.raises(InvalidResource, match="resourceType"):
        store.create({"resourceType": "observation"})
    with pytest.raises(InvalidResource, match="Bundle.type"):
        store.transaction({"resourceType": "Bundle", "type": "collection"})
    assert script.requests == []


# -- update --------------------------------------------------------------------------------------


def test_update_equal_content_is_a_noop_without_put() -> None:
    current = obs("o1", "3")
    current["meta"]["lastUpdated"] = "2024-06-01T00:00:00Z"
    script = Script(fhir(200, current))
    store, _ = make_store(script)
    mine = obs("o1", "1")
    del mine["meta"]
    result = store.update(mine)
    assert (result.outcome, result.version_id, result.wrote) == ("unchanged", "3", False)
    assert script.calls == ["GET /Observation/o1"]


def test_update_changed_content_puts_with_if_match_of_the_version_read() -> None:
    script = Script(fhir(200, obs("o1", "3")), fhir(200, obs("o1", "4", value=150.0)))
    store, _ = make_store(script)
    result = store.update(obs("o1", value=150.0))
    assert (result.outcome, result.version_id) == ("updated", "4")
    put = script.requests[1]
    assert (put.method, put.headers["If-Match"]) == ("PUT", 'W/"3"')
    assert json.loads(put.content)["valueQuantity"]["value"] == 150.0


def test_update_answer_without_body_is_completed_from_a_read() -> None:
    script = Script(
        fhir(200, obs("o1", "3")), fhir(200, ETag='W/"4"'), fhir(200, obs("o1", "4", value=150.0))
    )
    store, _ = make_store(script)
    result = store.update(obs("o1", value=150.0))
    assert (result.outcome, result.version_id, result.resource["valueQuantity"]["value"]) == (
        "updated",
        "4",
        150.0,
    )
    assert script.calls[-1] == "GET /Observation/o1/_history/4"


def test_update_of_missing_resource_creates_it() -> None:
    script = Script(fhir(404), fhir(201, obs("o1", "1")))
    store, _ = make_store(script)
    result = store.update(obs("o1"))
    assert result.outcome == "created"
    assert "If-Match" not in script.requests[1].headers


def test_update_412_race_rereads_and_retries_once() -> None:
    script = Script(
        fhir(200, obs("o1", "3")),
        fhir(412, outcome("version conflict", "conflict")),
        fhir(200, obs("o1", "4", value=130.0)),
        fhir(200, obs("o1", "5", value=150.0)),
    )
    store, _ = make_store(script)
    result = store.update(obs("o1", value=150.0))
    assert (result.outcome, result.version_id) == ("updated", "5")
    assert [r.headers.get("If-Match") for r in script.requests if r.method == "PUT"] == ['W/"3"', 'W/"4"']


def test_update_412_twice_surfaces_precondition_failed() -> None:
    conflict = fhir(412, outcome("version conflict", "conflict"))
    script = Script(fhir(200, obs("o1", "3")), conflict, fhir(200, obs("o1", "4")), conflict)
    store, _ = make_store(script)
    with pytest.raises(PreconditionFailed, match="version conflict"):
        store.update(obs("o1", value=150.0))


def test_update_with_stale_if_match_fails_without_put() -> None:
    script = Script(fhir(200, obs("o1", "4")))
    store, _ = make_store(script)
    with pytest.raises(PreconditionFailed, match="If-Match version 3"):
        store.update(obs("o1", value=150.0), if_match="3")
    assert script.calls == ["GET /Observation/o1"]


def test_update_with_if_match_and_412_on_put_is_not_retried() -> None:
    script = Script(fhir(200, obs("o1", "3")), fhir(412, outcome("version conflict", "conflict")))
    store, _ = make_store(script)
    with pytest.raises(PreconditionFailed):
        store.update(obs("o1", value=150.0), if_match="3")
    assert script.calls == ["GET /Observation/o1", "PUT /Observation/o1"]


# -- errors --------------------------------------------------------------------------------------


def test_operation_outcome_becomes_typed_error_with_diagnostics() -> None:
    body = outcome("Observation.status: minimum required = 1, but only found 0")
    script = Script(fhir(422, body))
    store, _ = make_store(script)
    with pytest.raises(InvalidResource) as info:
        store.create(obs())
    message = str(info.value)
    assert "create Observation" in message and "HTTP 422" in message
    assert "Observation.status: minimum required" in message
    assert info.value.outcome == body


def test_error_message_names_search_params_but_not_their_values() -> None:
    script = Script(fhir(400, outcome("Unknown search parameter 'foo'")))
    store, _ = make_store(script)
    with pytest.raises(FhirError) as info:
        store.search("Observation", {"subject": "Patient/secret-mrn-123", "foo": "x"})
    assert "Observation?subject&foo" in str(info.value)
    assert "secret-mrn-123" not in str(info.value)


def test_logs_carry_neither_search_values_nor_the_token(caplog: pytest.LogCaptureFixture) -> None:
    credential = FakeCredential("secret-token")
    script = Script(fhir(503), fhir(200, searchset([])))
    store, _ = make_store(script, credential=credential)
    with caplog.at_level(logging.DEBUG):
        store.search("Observation", {"identifier": "urn:mrn|MRN-778899", "_count": "10"})
    assert "Observation?identifier&_count" in caplog.text  # our retry line
    assert "identifier=...&_count=..." in caplog.text  # httpx's request line, values redacted
    assert "MRN-778899" not in caplog.text and "secret-token" not in caplog.text


def test_non_fhir_error_body_still_gives_a_clear_message() -> None:
    script = Script(httpx.Response(403, text="<html>denied</html>"))
    store, _ = make_store(script)
    with pytest.raises(FhirError) as info:
        store.read("Patient", "p1")
    assert info.value.status == 403
    assert "read Patient/p1 failed with HTTP 403: Forbidden" in str(info.value)


# -- auth ----------------------------------------------------------------------------------------


def test_bearer_token_is_sent_cached_and_uses_the_default_scope() -> None:
    credential = FakeCredential("tok-1", "tok-2")
    script = Script(fhir(200, obs()), fhir(200, obs()))
    store, _ = make_store(script, credential=credential)
    store.read("Observation", "o1")
    store.read("Observation", "o1")
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer tok-1"] * 2
    assert credential.scopes == [("https://ws-fhir.fhir.azurehealthcareapis.com/.default",)]


def test_token_close_to_expiry_is_refreshed() -> None:
    credential = FakeCredential("tok-1", "tok-2", lifetime_s=120)  # inside the 5-minute margin
    script = Script(fhir(200, obs()), fhir(200, obs()))
    store, _ = make_store(script, credential=credential, scope="api://fhir/.default")
    store.read("Observation", "o1")
    store.read("Observation", "o1")
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer tok-1", "Bearer tok-2"]
    assert credential.scopes == [("api://fhir/.default",)] * 2


def test_401_refreshes_the_token_once_then_succeeds() -> None:
    credential = FakeCredential("revoked", "fresh")
    script = Script(fhir(401), fhir(200, obs()))
    store, slept = make_store(script, credential=credential)
    assert store.read("Observation", "o1")["id"] == "o1"
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer revoked", "Bearer fresh"]
    assert slept == []


def test_401_with_a_cae_claims_challenge_passes_the_claims() -> None:
    claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
    encoded = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    challenge = f'Bearer realm="", error="insufficient_claims", claims="{encoded}"'
    credential = FakeCredential("old", "new")
    script = Script(fhir(401, **{"WWW-Authenticate": challenge}), fhir(200, obs()))
    store, _ = make_store(script, credential=credential)
    store.read("Observation", "o1")
    assert credential.claims == [None, claims]


def test_second_401_surfaces_unauthorized_without_the_token() -> None:
    secret = "eyJhbGciOi.secret-token-value"
    credential = FakeCredential(secret, secret)
    echo = outcome(f"Invalid bearer token {secret}", "login")
    script = Script(fhir(401, echo), fhir(401, echo), fhir(200, obs()))
    store, _ = make_store(script, credential=credential)
    with pytest.raises(Unauthorized) as info:
        store.read("Observation", "o1")
    assert len(script.requests) == 2
    assert secret not in str(info.value)
    assert secret not in json.dumps(info.value.outcome)
    assert secret not in repr(info.value.args)


def test_credential_failure_is_unauthorized() -> None:
    class Broken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise RuntimeError("no managed identity endpoint")

    store, _ = make_store(Script(), credential=Broken())
    with pytest.raises(Unauthorized, match="no managed identity endpoint"):
        store.read("Observation", "o1")


def test_no_credential_no_authorization_header() -> None:
    script = Script(fhir(200, obs()))
    store, _ = make_store(script)
    store.read("Observation", "o1")
    assert "Authorization" not in script.requests[0].headers
    assert script.requests[0].headers["Accept"] == "application/fhir+json"


# -- search, history, transaction ------------------------------------------------------------------


def searchset(resources: list[dict[str, Any]], total: int | None = None, next_url: str | None = None) -> dict:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    for r in resources:
        bundle["entry"].append({"resource": r, "search": {"mode": "match"}})
    if total is not None:
        bundle["total"] = total
    if next_url:
        bundle["link"] = [{"relation": "self", "url": BASE}, {"relation": "next", "url": next_url}]
    return bundle


def test_search_keeps_matches_only_and_parses_next_params() -> None:
    bundle = searchset(
        [obs("o1")],
        total=2,
        next_url=f"{BASE}/Observation?subject=Patient%2Fp1&date=ge2024-01-01&date=le2024-02-01&ct=abc%3D",
    )
    bundle["entry"].append(
        {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}}
    )
    bundle["entry"].append({"resource": obs("o2")})  # no search.mode: a match
    script = Script(fhir(200, bundle))
    store, _ = make_store(script)
    result = store.search("Observation", {"subject": "Patient/p1", "date": ["ge2024-01-01", "le2024-02-01"]})
    assert [r["id"] for r in result.resources] == ["o1", "o2"]
    assert result.total == 2
    assert result.next_params == {
        "subject": "Patient/p1",
        "date": ["ge2024-01-01", "le2024-02-01"],
        "ct": "abc=",
    }
    sent = parse_qsl(script.requests[0].url.query.decode())
    assert sent == [("subject", "Patient/p1"), ("date", "ge2024-01-01"), ("date", "le2024-02-01")]


def test_search_summary_count_passes_through() -> None:
    script = Script(fhir(200, {"resourceType": "Bundle", "type": "searchset", "total": 42}))
    store, _ = make_store(script)
    result = store.search("Observation", {"code": "http://loinc.org|8480-6", "_summary": "count"})
    assert (result.resources, result.total, result.next_params) == ([], 42, None)
    assert script.requests[0].url.params["_summary"] == "count"


def test_search_all_follows_next_links_including_hapi_getpages() -> None:
    script = Script(
        fhir(200, searchset([obs("o1"), obs("o2")], next_url=f"{BASE}?_getpages=uuid-1&_getpagesoffset=2")),
        fhir(200, searchset([obs("o3")], next_url=f"{BASE}/Observation?_getpages=uuid-1&_getpagesoffset=3")),
        fhir(200, searchset([obs("o4")])),
    )
    store, _ = make_store(script)
    found = search_all(store, "Observation", {"subject": "Patient/p1", "_count": "2"})
    assert [r["id"] for r in found] == ["o1", "o2", "o3", "o4"]
    assert [r.url.path for r in script.requests] == ["/fhir/Observation", "/fhir", "/fhir"]


class PagedFake:
    """A FhirStore stand-in whose pages are given directly, to test the generic pager."""

    def __init__(self, pages: list[SearchResult]) -> None:
        self.pages = pages
        self.seen: list[Any] = []

    def search(self, resource_type: str, params: Any = None) -> SearchResult:
        self.seen.append(params)
        return self.pages[len(self.seen) - 1]


def test_search_all_refuses_to_truncate_silently() -> None:
    pages = [SearchResult([{"id": str(i)}], next_params={"page": str(i + 1)}) for i in range(5)]
    with pytest.raises(TooManyPages, match="more than 3 pages"):
        search_all(PagedFake(pages), "Observation", {}, max_pages=3)  # type: ignore[arg-type]


def test_search_all_detects_a_looping_next_link() -> None:
    pages = [SearchResult([{"id": "a"}], next_params={"page": "2"})] * 3
    with pytest.raises(TooManyPages, match="repeats"):
        search_all(PagedFake(pages), "Observation", {})  # type: ignore[arg-type]


def test_history_merges_pages_newest_first() -> None:
    first = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": obs("o1", "3")}, {"resource": obs("o1", "2")}],
        "link": [{"relation": "next", "url": f"{BASE}/Observation/o1/_history?ct=xyz"}],
    }
    second = {"resourceType": "Bundle", "type": "history", "entry": [{"resource": obs("o1", "1")}]}
    script = Script(fhir(200, first), fhir(200, second))
    store, _ = make_store(script)
    history = store.history("Observation", "o1")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["3", "2", "1"]
    assert "link" not in history
    assert script.calls == ["GET /Observation/o1/_history", "GET /Observation/o1/_history"]
    assert script.requests[1].url.params["ct"] == "xyz"


def test_transaction_posts_to_base_and_is_not_retried_after_a_gateway_error() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    response = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    store, _ = make_store(ok := Script(fhir(200, response)))
    assert store.transaction(bundle)["type"] == "transaction-response"
    assert ok.calls == ["POST "]
    store, _ = make_store(failing := Script(fhir(504), fhir(200, response)))
    with pytest.raises(ServerError):
        store.transaction(bundle)
    assert len(failing.requests) == 1


def test_close_leaves_an_injected_client_open_and_closes_its_own() -> None:
    client = httpx.Client(transport=httpx.MockTransport(Script(fhir(200, obs()))))
    with HttpFhirStore(BASE, client=client) as store:
        store.read("Observation", "o1")
    assert not client.is_closed
    own = HttpFhirStore(BASE)
    own.close()
    assert own._client.is_closed


def test_constructor_rejects_bad_base_url() -> None:
    with pytest.raises(ValueError, match="base_url"):
        HttpFhirStore("ws-fhir.example/fhir")
