"""Search pages of the FHIR facade are capped, and clients reach every match by next links."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from fhirstore.http_store import HttpFhirStore
from fhirstore.paging import search_all
from fhirstore.rest import MAX_PAGE_SIZE
from fhirstore.sqlite import SqliteFhirStore
from tests.support.fhir_server import serve_store

TOKEN = "paging-token"
MATCHES = MAX_PAGE_SIZE + 150


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("paging") / "fhir.db"
    with SqliteFhirStore(path) as store:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Basic", "code": {"text": f"item {i}"}},
             "request": {"method": "POST", "url": "Basic"}} for i in range(MATCHES)]}
        store.transaction(bundle)
        with serve_store(store, token=TOKEN) as url:
            yield url


def test_a_huge_count_is_served_as_the_maximum_page_with_a_next_link(base_url: str) -> None:
    resp = httpx.get(f"{base_url}/Basic", params={"_count": "1000000000"},
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200
    bundle = resp.json()
    assert len(bundle["entry"]) == MAX_PAGE_SIZE
    assert bundle["total"] == MATCHES
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert f"_count={MAX_PAGE_SIZE}" in links["self"]
    assert f"_count={MAX_PAGE_SIZE}" in links["next"] and f"_offset={MAX_PAGE_SIZE}" in links["next"]


def test_fhirpy_follows_next_links_to_every_match(base_url: str) -> None:
    client = SyncFHIRClient(base_url, authorization=f"Bearer {TOKEN}")
    found = client.resources("Basic").limit(1000000000).fetch_all()
    assert len({r.id for r in found}) == MATCHES


def test_the_http_adapter_follows_next_links_to_every_match(base_url: str) -> None:
    client = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    store = HttpFhirStore(base_url, client=client)
    found = search_all(store, "Basic", {"_count": "1000000000"})
    assert len({r["id"] for r in found}) == MATCHES
    client.close()
