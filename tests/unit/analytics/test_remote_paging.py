"""The remote export source walks a search or a history by the server's `next` links, and stops with a
clear error when a server's links loop instead of paging forever."""

from __future__ import annotations

import httpx
import pytest

from analytics.export.http import FhirHttp, RemoteError
from analytics.export.remote_source import FhirServerSource

BASE = "https://fhir.example.test/r4"
STATEMENT = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
    {"type": "Observation", "interaction": [{"code": "search-type"}, {"code": "history-type"}],
     "searchParam": [{"name": "_lastUpdated", "type": "date"}]}]}]}


def _source(page: dict, *, use_history: bool) -> FhirServerSource:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=STATEMENT)
        if "_summary" in request.url.params:
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 1})
        return httpx.Response(200, json=page)

    http = FhirHttp(BASE, client=httpx.Client(transport=httpx.MockTransport(handle)), sleep=lambda s: None)
    return FhirServerSource(http, ["Observation"], use_history=use_history)


@pytest.mark.parametrize("use_history", [False, True], ids=["search", "history"])
def test_a_next_link_back_to_a_seen_page_is_an_error(use_history: bool) -> None:
    looping = {"resourceType": "Bundle", "type": "searchset", "entry": [],
               "link": [{"relation": "next", "url": f"{BASE}/Observation?page=2"}]}
    source = _source(looping, use_history=use_history)
    with pytest.raises(RemoteError, match="next link repeats an earlier page"):
        list(source.open(0, 10**15).changes("Observation"))
