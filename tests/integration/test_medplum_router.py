"""What Medplum's FHIR router (in-memory repository) does and does not do, checked on the running
server: the facts docs/fhir-servers.md ("Medplum in CI") states, each asserted here so a new router
version that changes one fails this file rather than silently changing what the other tests prove.

`/fhir/R4` is the wrapper (tests/medplum/server.mjs), which adds next links and `/metadata` as the
Medplum server has them; `/bare/fhir/R4` is the same repository without those two additions."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fhirstore.http_store import HttpFhirStore
from fhirstore.paging import TruncatedSearch, search_all
from handlers.sweeps import due_search_support, escalation_candidates
from tests.support.medplum import MedplumServer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def fhir(medplum: MedplumServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=medplum.url, headers=JSON, timeout=10) as client:
        yield client


@pytest.fixture
def bare(medplum: MedplumServer) -> Iterator[httpx.Client]:
    origin, _, base = medplum.url.partition("/fhir/")
    with httpx.Client(base_url=f"{origin}/bare/fhir/{base}", headers=JSON, timeout=10) as client:
        yield client


def basic(tag: str, i: int = 0) -> dict[str, Any]:
    return {"resourceType": "Basic", "code": {"coding": [{"system": "urn:t", "code": tag}]},
            "identifier": [{"system": "urn:t", "value": f"{tag}-{i}"}]}


def test_version_ids_are_uuids_and_a_creating_put_answers_200(fhir: httpx.Client) -> None:
    created = fhir.post("/Basic", json=basic("v"))
    assert created.status_code == 201 and created.headers["Location"].endswith(created.json()["id"])
    assert UUID.match(created.json()["meta"]["versionId"])
    rid = f"new-{uuid.uuid4().hex[:8]}"
    put = fhir.put(f"/Basic/{rid}", json={**basic("v"), "id": rid})
    assert put.status_code == 200 and "Location" not in put.headers  # a create, answered 200
    assert UUID.match(put.json()["meta"]["versionId"])
    assert put.headers["ETag"] == f'W/"{put.json()["meta"]["versionId"]}"'
    rid = f"new-{uuid.uuid4().hex[:8]}"
    answer = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**basic("v"), "id": rid}, "request": {"method": "PUT", "url": f"Basic/{rid}"}}]}).json()
    assert answer["entry"][0]["response"]["status"] == "200"  # a create in a transaction, too


def test_no_type_level_history(fhir: httpx.Client) -> None:
    rid = fhir.post("/Basic", json=basic("h")).json()["id"]
    assert fhir.get("/Basic/_history").status_code == 404
    history = fhir.get(f"/Basic/{rid}/_history").json()
    assert history["type"] == "history"  # instance history is there, its entries only the resource
    assert [set(e) for e in history["entry"]] == [{"resource"}]


def test_no_capability_statement_of_its_own(bare: httpx.Client, fhir: httpx.Client, medplum: MedplumServer) -> None:
    # The router takes `metadata` for a resource type and answers an empty searchset.
    own = bare.get("/metadata").json()
    assert own["resourceType"] == "Bundle" and own.get("total") == 0
    # Vigil copes either way: without a CapabilityStatement it looks for a SearchParameter registration.
    origin, _, base = medplum.url.partition("/fhir/")
    with HttpFhirStore(f"{origin}/bare/fhir/{base}") as store:
        assert not due_search_support(store).supported
    statement = fhir.get("/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    task = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Task")
    assert {"status", "focus", "identifier"} <= {p["name"] for p in task["searchParam"]}


def test_no_next_links_of_its_own(bare: httpx.Client, fhir: httpx.Client, medplum: MedplumServer) -> None:
    tag = uuid.uuid4().hex
    for i in range(5):
        fhir.post("/Basic", json=basic(tag, i))
    page = bare.get("/Basic", params={"code": f"urn:t|{tag}", "_count": "2"}).json()
    assert page["total"] == 5 and len(page["entry"]) == 2 and not page.get("link")
    wrapped = fhir.get("/Basic", params={"code": f"urn:t|{tag}", "_count": "2"}).json()
    assert [link["relation"] for link in wrapped["link"]] == ["self", "next"]
    assert "_offset=2" in wrapped["link"][1]["url"]
    # Without next links Vigil does not work on part of the matches: it says so (fhirstore/paging.py).
    origin, _, base = medplum.url.partition("/fhir/")
    with HttpFhirStore(f"{origin}/bare/fhir/{base}") as store, pytest.raises(TruncatedSearch, match="5"):
        search_all(store, "Basic", {"code": f"urn:t|{tag}", "_count": "2"})
    with HttpFhirStore(medplum.url) as store:
        assert len(search_all(store, "Basic", {"code": f"urn:t|{tag}", "_count": "2"})) == 5


def test_an_unknown_search_parameter_answers_an_empty_bundle(fhir: httpx.Client) -> None:
    fhir.post("/Task", json={"resourceType": "Task", "status": "requested", "intent": "order"})
    found = fhir.get("/Task", params={"escalation-due": "le2100-01-01", "status": "requested"})
    assert found.status_code == 200 and found.json().get("entry") is None


def test_conditional_transactions_over_8_entries_and_transactions_over_50_updates_are_refused(
        fhir: httpx.Client) -> None:
    def transaction(n: int, conditional: bool) -> httpx.Response:
        tag = uuid.uuid4().hex
        entries = []
        for i in range(n):
            resource = {**basic(tag, i), "id": f"{tag[:20]}-{i}"}
            request = {"method": "POST", "url": "Basic", "ifNoneExist": f"identifier=urn:t|{tag}-{i}"} if conditional \
                else {"method": "PUT", "url": f"Basic/{resource['id']}"}
            entries.append({"resource": resource, "request": request})
        return fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})

    assert transaction(8, conditional=True).status_code == 200
    refused = transaction(9, conditional=True)
    assert refused.status_code == 400 and "too many entries" in refused.text
    assert transaction(50, conditional=False).status_code == 200
    refused = transaction(51, conditional=False)
    assert refused.status_code == 400 and "more update operations than allowed" in refused.text


class _Receiver(BaseHTTPRequestHandler):
    posts: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.posts.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_no_subscriptions_run(fhir: httpx.Client) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/notify"
        sub = fhir.post("/Subscription", json={
            "resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": "Observation?",
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}).json()
        fhir.post("/Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
        time.sleep(1.0)
        assert _Receiver.posts == []
        assert fhir.get(f"/Subscription/{sub['id']}").json()["status"] == "requested"  # never activated
    finally:
        server.shutdown()
        server.server_close()


def test_a_registered_parameter_the_router_does_not_index_is_not_trusted(medplum: MedplumServer) -> None:
    """The router accepts a SearchParameter registration without indexing it, and answers a search
    by it with an empty Bundle. Without a CapabilityStatement (the bare router) the registration
    must not pass for support: the sweep would find no due Task, ever."""
    origin, _, base = medplum.url.partition("/fhir/")
    with HttpFhirStore(f"{origin}/bare/fhir/{base}") as store:
        store.create({"resourceType": "SearchParameter", "url": "urn:vigil:SearchParameter/escalation-due",
                      "name": "escalation-due", "status": "active", "code": "escalation-due", "base": ["Task"],
                      "type": "date", "description": "When a Task's escalation is due",
                      "expression": "Task.extension('urn:vigil:escalation-due').value"})
        task = f"due-{uuid.uuid4().hex[:8]}"
        store.update({"resourceType": "Task", "id": task, "status": "requested", "intent": "order",
                      "extension": [{"url": "urn:vigil:escalation-due", "valueDateTime": "2020-01-01T00:00:00Z"}]})
        assert store.search("Task", {"escalation-due": "le2026-01-01T00:00:00Z"}).resources == []  # not indexed
        support = due_search_support(store)
        assert not support.supported and "is registered" in support.detail and "empty result" in support.detail
        assert task in {t["id"] for t in escalation_candidates(store, datetime.now(UTC))}


def test_a_deleted_resource_is_forgotten_and_a_failed_transaction_is_not_rolled_back(fhir: httpx.Client) -> None:
    rid = fhir.post("/Basic", json=basic("d")).json()["id"]
    assert fhir.delete(f"/Basic/{rid}").status_code == 200
    assert fhir.get(f"/Basic/{rid}").status_code == 404  # the Medplum server answers 410 Gone

    stale = fhir.post("/Basic", json=basic("r")).json()
    fhir.put(f"/Basic/{stale['id']}", json={**stale, "code": {"text": "changed"}})
    fresh = f"r-{uuid.uuid4().hex[:8]}"
    answer = fhir.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**basic("r"), "id": fresh}, "request": {"method": "PUT", "url": f"Basic/{fresh}"}},
        {"resource": stale, "request": {"method": "PUT", "url": f"Basic/{stale['id']}",
                                        "ifMatch": f'W/"{stale["meta"]["versionId"]}"'}}]})
    assert answer.status_code == 412
    assert fhir.get(f"/Basic/{fresh}").status_code == 200  # written all the same
