"""The REST facade (`fhirstore.rest.handle`) over the SQLite store, without a network."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.clock import FixedClock
from fhirstore.rest import RestResponse, handle
from fhirstore.sqlite import SqliteFhirStore

BASE = "http://127.0.0.1:9999/fhir"
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def store(tmp_path: Path):
    with SqliteFhirStore(tmp_path / "fhir.db", clock=FixedClock(datetime(2024, 3, 5, 10, tzinfo=UTC))) as s:
        yield s


def call(store, method: str, path: str, query: str = "", body=None, **headers: str) -> RestResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    wanted = {**(JSON if body is not None else {}), **{k.replace("_", "-"): v for k, v in headers.items()}}
    return handle(store, method, path, query, wanted, raw, BASE + "/")


def diagnostics(response: RestResponse) -> str:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome["issue"][0]["diagnostics"]


def patient(**extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}], **extra}


def test_create_returns_201_with_location_etag_and_the_resource(store) -> None:
    response = call(store, "POST", "Patient", body=patient())

    created = response.json()
    assert response.status == 201
    assert response.headers["Location"] == f"{BASE}/Patient/{created['id']}/_history/1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Last-Modified"] == "Tue, 05 Mar 2024 10:00:00 GMT"
    assert response.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert store.read("Patient", created["id"]) == created


def test_if_none_exist_header_and_query_string_criteria(store) -> None:
    first = call(store, "POST", "Patient", body=patient(), If_None_Exist="identifier=urn:mrn|1")
    again = call(store, "POST", "Patient", body=patient(), If_None_Exist="identifier=urn:mrn|1")
    by_query = call(store, "POST", "Patient", "identifier=urn%3Amrn%7C1", body=patient())

    assert (first.status, again.status, by_query.status) == (201, 200, 200)
    assert again.json()["id"] == first.json()["id"] == by_query.json()["id"]


def test_update_if_match_and_id_rules(store) -> None:
    made = call(store, "PUT", "Patient/p1", body=patient(id="p1"))
    changed = call(store, "PUT", "Patient/p1", body=patient(id="p1", active=True), If_Match='W/"1"')
    stale = call(store, "PUT", "Patient/p1", body=patient(id="p1", active=False), If_Match='W/"1"')
    mismatch = call(store, "PUT", "Patient/p1", body=patient(id="p2"))
    missing = call(store, "PUT", "Patient/p1", body=patient())

    assert (made.status, changed.status, stale.status) == (201, 200, 412)
    assert changed.headers["ETag"] == 'W/"2"'
    assert "expects version 1" in diagnostics(stale)
    assert (mismatch.status, missing.status) == (400, 400)
    assert "must equal the id in the URL" in diagnostics(mismatch)


def test_conditional_update_and_delete_by_criteria(store) -> None:
    created = call(store, "PUT", "Patient", "identifier=urn:mrn|1", body=patient())
    updated = call(store, "PUT", "Patient", "identifier=urn:mrn|1", body=patient(active=True))
    deleted = call(store, "DELETE", "Patient", "identifier=urn:mrn|1")
    no_criteria = call(store, "PUT", "Patient", body=patient())

    assert (created.status, updated.status, deleted.status) == (201, 200, 204)
    assert updated.json()["id"] == created.json()["id"] and updated.json()["active"] is True
    assert store.search("Patient").total == 0
    assert no_criteria.status == 400 and "needs an id" in diagnostics(no_criteria)


def test_read_vread_history_delete_and_gone(store) -> None:
    call(store, "PUT", "Patient/p1", body=patient(id="p1"))
    call(store, "PUT", "Patient/p1", body=patient(id="p1", active=True))

    read = call(store, "GET", "Patient/p1")
    not_modified = call(store, "GET", "Patient/p1", If_None_Match='W/"2"')
    vread = call(store, "GET", "Patient/p1/_history/1")
    history = call(store, "GET", "Patient/p1/_history")
    deleted = call(store, "DELETE", "Patient/p1")
    gone = call(store, "GET", "Patient/p1")
    never = call(store, "GET", "Patient/never")

    assert (read.status, read.headers["ETag"], read.json()["active"]) == (200, 'W/"2"', True)
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert vread.status == 200 and "active" not in vread.json()
    assert history.json()["total"] == 2
    assert history.json()["entry"][0]["fullUrl"] == f"{BASE}/Patient/p1"
    assert (deleted.status, deleted.body) == (204, b"")
    assert (gone.status, never.status) == (410, 404)
    assert gone.json()["issue"][0]["code"] == "deleted"


def test_search_bundle_has_total_links_and_full_urls(store) -> None:
    for n in range(3):
        call(store, "PUT", f"Patient/p{n}", body=patient(id=f"p{n}", active=True))

    page = call(store, "GET", "Patient", "active=true&_count=2&_sort=_id&_format=json")
    bundle = page.json()

    assert page.status == 200 and bundle["type"] == "searchset" and bundle["total"] == 3
    assert [e["fullUrl"] for e in bundle["entry"]] == [f"{BASE}/Patient/p0", f"{BASE}/Patient/p1"]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"] == f"{BASE}/Patient?active=true&_count=2&_sort=_id"
    assert links["next"] == f"{BASE}/Patient?active=true&_count=2&_sort=_id&_offset=2"
    rest = call(store, "GET", "Patient", links["next"].split("?", 1)[1]).json()
    assert [e["resource"]["id"] for e in rest["entry"]] == ["p2"] and "next" not in str(rest["link"])


def test_post_search_with_a_form_body(store) -> None:
    call(store, "PUT", "Patient/p1", body=patient(id="p1", active=True))

    response = handle(store, "POST", "Patient/_search", "_count=5",
                      {"Content-Type": "application/x-www-form-urlencoded"}, b"identifier=urn%3Amrn%7C1", BASE)

    assert response.status == 200 and response.json()["total"] == 1


def test_search_errors_are_400_operation_outcomes(store) -> None:
    response = call(store, "GET", "Observation", "colour=red")

    assert response.status == 400
    assert "unknown search parameter 'colour' for Observation" in diagnostics(response)


def test_transaction_at_the_root(store) -> None:
    response = call(store, "POST", "", body={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": patient(), "request": {"method": "POST", "url": "Patient"}}]})

    bundle = response.json()
    assert response.status == 200 and bundle["type"] == "transaction-response"
    assert bundle["entry"][0]["fullUrl"].startswith(f"{BASE}/Patient/")


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [("return=minimal", None), ("return=representation", "Patient"), ("return=OperationOutcome", "OperationOutcome")],
)
def test_prefer_return(store, prefer, expected) -> None:
    response = call(store, "POST", "Patient", body=patient(), Prefer=prefer)

    assert response.status == 201 and "Location" in response.headers
    assert (response.json() or {}).get("resourceType") == expected


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/fhir+json", 400, "not valid JSON: Expecting property name enclosed in double"),
        (b"", "application/fhir+json", 400, "the request body is empty"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b"\xff\xfe", "application/fhir+json", 400, "not UTF-8"),
        (b'{"resourceType": "Observation"}', "application/fhir+json", 400, "this URL takes Patient"),
        (b"<Patient/>", "application/fhir+xml", 415, "unsupported Content-Type 'application/fhir+xml'"),
    ],
)
def test_bad_bodies_are_explained(store, body, content_type, status, message) -> None:
    response = handle(store, "POST", "Patient", "", {"content-type": content_type}, body, BASE)

    assert response.status == status
    assert message in diagnostics(response)


def test_routing_errors(store) -> None:
    assert call(store, "PATCH", "Patient/p1", body=patient()).status == 405
    assert call(store, "PATCH", "Patient/p1", body=patient()).headers["Allow"] == "GET, PUT, DELETE"
    assert call(store, "GET", "").status == 405
    assert call(store, "GET", "not-a-type").status == 404
    assert call(store, "GET", "Patient/p1/_history/1/extra").status == 404
    assert call(store, "GET", "Patient", "_format=xml").status == 406


def test_unexpected_failures_become_500_without_details(store, caplog) -> None:
    class Broken:
        def read(self, resource_type: str, id: str) -> dict:
            raise RuntimeError("secret detail")

    response = handle(Broken(), "GET", "Patient/p1", "", {}, b"", BASE)  # type: ignore[arg-type]

    assert response.status == 500
    assert "secret detail" not in response.body.decode()
    assert "internal error" in diagnostics(response)
    assert "RuntimeError" in caplog.text and "secret detail" not in caplog.text


def test_capability_statement_lists_types_and_search_params(store) -> None:
    response = call(store, "GET", "metadata")

    statement = response.json()
    assert response.status == 200 and statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"Observation", "Patient", "Task", "DetectedIssue", "Communication"} <= set(resources)
    params = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert params["component-code"] == "token" and params["date"] == "date" and params["patient"] == "reference"
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"transaction", "batch"}


def test_a_full_disk_is_a_503_to_retry_not_a_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the embedded store cannot make for lack of space (SQLITE_FULL, simulated with
    `PRAGMA max_page_count` as tests/e2e/test_storage_faults.py does) is the server's state: 503 with
    Retry-After, so a FHIR client retries the write later instead of giving it up as a server bug."""
    import sqlite3

    path = tmp_path / "full.db"
    SqliteFhirStore(path).close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    real = sqlite3.connect

    def connect(p, *args, **kwargs):  # noqa: ANN001, ANN202
        conn = real(p, *args, **kwargs)
        if str(p).endswith("full.db"):
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    with SqliteFhirStore(path) as full:
        response = call(full, "PUT", "Patient/big", body=patient(id="big", text={"status": "generated",
                        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + "x" * 200_000 + "</div>"}))
    assert response.status == 503, response.body[:300]
    assert int(response.headers["Retry-After"]) > 0
    assert "full" in diagnostics(response)
