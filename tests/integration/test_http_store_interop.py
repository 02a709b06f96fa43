"""HTTP adapter details that differ between FHIR servers: transaction size limits, searches whose
`total` says more matched than arrived, and creating PUTs answered 200.

Servers are played by httpx MockTransport handlers that answer as the named server does, and by
the project's loopback facade over the embedded store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.clock import FixedClock
from fhirstore.errors import InvalidResource
from fhirstore.http_store import DEFAULT_TRANSACTION_SIZE, HttpFhirStore
from fhirstore.paging import TruncatedSearch, search_all
from fhirstore.sqlite import SqliteFhirStore
from runtime.bootstrap import _fhir_store
from runtime.settings import Settings, SettingsError
from tests.support.fhir_server import serve_store
from tests.support.pipeline import DAYTIME

BASE = "http://fhir.test/fhir"
Handler = Callable[[httpx.Request], httpx.Response]


def store_for(handler: Handler, **kwargs) -> HttpFhirStore:
    return HttpFhirStore(BASE, client=httpx.Client(transport=httpx.MockTransport(handler)), max_retries=0,
                         **kwargs)


def observation(n: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{n}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": f"2026-11-20T08:{n % 60:02d}:00Z",
            "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def put_bundle(n: int, **request: str) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(i), "request": {"method": "PUT", "url": f"Observation/obs-{i}", **request}}
        for i in range(n)]}


# -- transaction size --------------------------------------------------------------------------

class MedplumLikeTransactions:
    """Refuses a transaction of more than 50 entries, as Medplum does; answers the others."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        bundle = json.loads(request.content)
        self.sizes.append(len(bundle["entry"]))
        if len(bundle["entry"]) > 50:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "Maximum 50 updates per transaction"}]})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created", "location": f"{e['request']['url']}/_history/1"}}
            for e in bundle["entry"]]})


def test_a_large_transaction_goes_in_chunks_the_server_accepts() -> None:
    server = MedplumLikeTransactions()
    response = store_for(server).transaction(put_bundle(120))
    assert DEFAULT_TRANSACTION_SIZE == 50 and server.sizes == [50, 50, 20]
    assert response["type"] == "transaction-response"
    assert [e["response"]["location"] for e in response["entry"]] == [
        f"Observation/obs-{i}/_history/1" for i in range(120)]


def test_the_size_is_the_setting(tmp_path: Path) -> None:
    settings = Settings.from_env({"VIGIL_FHIR_URL": BASE, "VIGIL_FHIR_TRANSACTION_SIZE": "8"}, data_dir=tmp_path)
    store, _ = _fhir_store(settings, FixedClock(DAYTIME))
    try:
        assert isinstance(store, HttpFhirStore) and store.max_transaction_entries == 8
    finally:
        store.close()
    assert Settings.from_env({}, data_dir=tmp_path).fhir_transaction_size == 50
    with pytest.raises(SettingsError, match="VIGIL_FHIR_TRANSACTION_SIZE"):
        Settings.from_env({"VIGIL_FHIR_TRANSACTION_SIZE": "0"}, data_dir=tmp_path)


def test_a_transaction_whose_entries_refer_to_each_other_is_not_split() -> None:
    server = MedplumLikeTransactions()
    bundle = put_bundle(3)
    bundle["entry"][0]["fullUrl"] = "urn:uuid:6f1c0c9e-2f5e-4b55-9f0a-3f5f1d1e2a10"
    with pytest.raises(InvalidResource, match="over the server's limit of 2 .* cannot be split"):
        store_for(server, max_transaction_entries=2).transaction(bundle)
    twice = put_bundle(3)
    twice["entry"][2]["request"]["url"] = "Observation/obs-0"
    with pytest.raises(InvalidResource, match="two entries write Observation/obs-0"):
        store_for(server, max_transaction_entries=2).transaction(twice)
    assert server.sizes == []  # nothing was sent


def test_a_batch_is_split_whatever_its_entries(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(DAYTIME)) as db, serve_store(db) as base, \
            HttpFhirStore(base, max_transaction_entries=7) as http:
        bundle = {**put_bundle(20), "type": "batch"}
        response = http.transaction(bundle)
        assert response["type"] == "batch-response"
        assert [e["response"]["status"][:3] for e in response["entry"]] == ["201"] * 20
        assert db.search("Observation", {"_summary": "count"}).total == 20


def test_chunked_transactions_on_the_facade_write_everything_once(tmp_path: Path) -> None:
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(DAYTIME)) as db, serve_store(db) as base, \
            HttpFhirStore(base, max_transaction_entries=8) as http:
        first = http.transaction(put_bundle(30))
        assert [e["response"]["status"][:3] for e in first["entry"]] == ["201"] * 30
        again = http.transaction(put_bundle(30))  # a replay: every entry an update, none created
        assert not [e for e in again["entry"] if e["response"]["status"].startswith("201")]
        assert db.search("Observation", {"_summary": "count"}).total == 30


# -- truncated searches ------------------------------------------------------------------------

def paged_server(total: int | None, returned: int, *, next_link: bool = False) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        page = request.url.params.get("page")
        bundle: dict = {"resourceType": "Bundle", "type": "searchset",
                        "entry": [{"resource": observation(i + (returned if page else 0)), "search": {"mode": "match"}}
                                  for i in range(returned)]}
        if total is not None:
            bundle["total"] = total
        if next_link and not page:
            bundle["link"] = [{"relation": "next", "url": f"{BASE}/Observation?page=2"}]
        return httpx.Response(200, json=bundle)

    return handle


def test_a_total_larger_than_what_arrived_without_a_next_link_is_an_error() -> None:
    with pytest.raises(TruncatedSearch, match="counted 250 matches but returned 100 and no next link"):
        search_all(store_for(paged_server(250, 100)), "Observation", {"subject": "Patient/p1"})


def test_a_truncated_search_may_be_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fhirstore.paging")
    found = search_all(store_for(paged_server(250, 100)), "Observation", on_truncated="warn")
    assert len(found) == 100
    assert "counted 250 matches but returned 100" in caplog.text


@pytest.mark.parametrize(("total", "returned", "next_link", "expected"), [
    (None, 100, False, 100),  # no total (Health Data Services without _total): nothing to compare
    (100, 100, False, 100),
    (200, 100, True, 200),  # the rest came through the next link
])
def test_complete_searches_pass(total: int | None, returned: int, next_link: bool, expected: int) -> None:
    assert len(search_all(store_for(paged_server(total, returned, next_link=next_link)), "Observation")) == expected


# -- a PUT that creates, answered 200 ---------------------------------------------------------

def put_server(put_answer: Callable[[dict], httpx.Response]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]})
        return put_answer(json.loads(request.content))

    return handle


@pytest.mark.parametrize("answer", [
    lambda body: httpx.Response(200, json={**body, "meta": {"versionId": "1"}}),
    lambda body: httpx.Response(200, json={**body, "meta": {"versionId": "1"}},
                                headers={"ETag": 'W/"1"'}),
    lambda body: httpx.Response(200, json={**body, "meta": {"versionId": "abc"}},
                                headers={"Location": f"{BASE}/Observation/obs-1/_history/1"}),
    lambda body: httpx.Response(201, json={**body, "meta": {"versionId": "0f6e"}}),
], ids=["meta-version-1", "etag-1", "location-history-1", "201"])
def test_a_creating_put_counts_as_created_where_the_server_says_so(answer) -> None:
    result = store_for(put_server(answer)).update(observation(1))
    assert (result.outcome, result.id) == ("created", "obs-1")


def test_a_200_put_with_an_opaque_version_counts_as_an_update() -> None:
    # Medplum's in-memory router: UUID version ids and no Location: nothing shows a first version.
    answer = lambda body: httpx.Response(200, json={**body, "meta": {"versionId": "2b0c8d9e-4c1f"}})  # noqa: E731
    assert store_for(put_server(answer)).update(observation(1)).outcome == "updated"
