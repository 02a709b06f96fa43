"""The rest-hook event source: Vigil's own R4 Subscriptions on the server, and notifications posted
to the `fhir_notification` function the way a subscribing server sends them (full resource, empty
ping, or a Subscriptions Backport notification Bundle)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from common.clock import FixedClock
from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import Services, bootstrap, ingest_deps, install
from runtime.event_sources import RestHookSource, event_source
from runtime.host_functions import registered_functions
from runtime.settings import Settings, SettingsError
from tests.support.fhir_server import serve_store
from tests.support.pipeline import DAYTIME, add_patient, reading

FUNCTIONS = {f.get_function_name(): f.get_user_function() for f in registered_functions(function_app.app)}
ENDPOINT = "https://vigil.example.test/api/fhir-notify"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SqliteFhirStore, FixedClock]]:
    clock = FixedClock(DAYTIME)
    with SqliteFhirStore(tmp_path / "server.db", clock=clock) as db, serve_store(db) as base:
        yield base, db, clock


@pytest.fixture
def vigil(server, tmp_path: Path) -> Iterator[Services]:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "vigil", fhir_url=server[0],
                                           event_source="rest-hook", subscription_endpoint=ENDPOINT,
                                           subscription_key="sub-key"), clock=FixedClock(DAYTIME))
    install(services)
    yield services
    install(None)
    services.close()


def notify(body: bytes) -> tuple[int, dict]:
    response = FUNCTIONS["fhir_notification"](func.HttpRequest("POST", "/api/fhir-notify", body=body))
    return response.status_code, json.loads(response.get_body())


def crisis(s: Services) -> dict:
    handle_device_messages([RawMessage(body=reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00",
                                                    {"systolic": 186, "diastolic": 112}))], ingest_deps(s))
    [obs] = search_all(s.store, "Observation", {"subject": "Patient/p1"})
    return obs


def test_rest_hook_needs_the_endpoint(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="VIGIL_SUBSCRIPTION_ENDPOINT"):
        Settings.from_env({}, data_dir=tmp_path, fhir_url="http://hapi.test/fhir", event_source="rest-hook")


def test_vigil_keeps_its_subscriptions_in_place(vigil: Services, server) -> None:
    _, db, _ = server
    source = event_source(vigil)
    assert isinstance(source, RestHookSource)
    FUNCTIONS["pull_fhir_changes"](None)
    subs = {s["id"]: s for s in db.search("Subscription", {}).resources}
    assert set(subs) == {"vigil-observation", "vigil-questionnaireresponse"}
    obs = subs["vigil-observation"]
    assert (obs["status"], obs["criteria"], obs["channel"]["type"], obs["channel"]["endpoint"]) == (
        "requested", "Observation?", "rest-hook", ENDPOINT)
    assert obs["channel"]["header"] == ["x-functions-key: sub-key"]
    assert obs["channel"]["payload"] == "application/fhir+json"

    # The server accepts one and turns the other off: the active one is left alone, the other re-requested.
    db.update({**obs, "status": "active"})
    qr = subs["vigil-questionnaireresponse"]
    db.update({**qr, "status": "error", "error": "endpoint answered 503"})
    assert source.subscriptions.ensure() == ["Subscription/vigil-questionnaireresponse requested again"]
    assert db.read("Subscription", "vigil-observation")["status"] == "active"
    assert db.read("Subscription", "vigil-questionnaireresponse")["status"] == "requested"
    assert source.subscriptions.ensure() == []


def test_a_full_resource_notification_opens_one_episode_and_a_redelivery_adds_nothing(vigil: Services) -> None:
    s = vigil
    add_patient(s, "p1")
    obs = crisis(s)
    assert notify(json.dumps(obs).encode()) == (200, {"kind": "resource", "delivered": 1})
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    assert issue["code"]["coding"][0]["code"] == "htn-crisis"
    sent = len(s.channels["outbox"].provider.messages())
    assert notify(json.dumps(obs).encode())[0] == 200  # the server retried
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1
    assert len(s.channels["outbox"].provider.messages()) == sent


def test_an_empty_notification_runs_the_polling_source(vigil: Services, server) -> None:
    s, (_, _, server_clock) = vigil, server
    add_patient(s, "p1")
    assert notify(b"") == (200, {"kind": "ping", "delivered": 0})  # places the cursor
    server_clock.set(DAYTIME + timedelta(seconds=30))
    crisis(s)
    s.clock.set(DAYTIME + timedelta(minutes=1))  # type: ignore[attr-defined]
    assert notify(b"") == (200, {"kind": "ping", "delivered": 1})
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1


def backport_bundle(kind: str, entries: list[dict]) -> bytes:
    status = {"resourceType": "Parameters", "parameter": [
        {"name": "subscription", "valueReference": {"reference": "Subscription/vigil-observation"}},
        {"name": "status", "valueCode": "active"}, {"name": "type", "valueCode": kind}]}
    return json.dumps({"resourceType": "Bundle", "type": "history",
                       "entry": [{"fullUrl": "urn:uuid:9b1c", "resource": status}, *entries]}).encode()


def test_backport_notifications(vigil: Services) -> None:
    s = vigil
    add_patient(s, "p1")
    assert notify(backport_bundle("handshake", [])) == (200, {"kind": "handshake", "delivered": 0})
    assert notify(backport_bundle("heartbeat", [])) == (200, {"kind": "heartbeat", "delivered": 0})
    obs = crisis(s)
    id_only = {"fullUrl": f"http://fhir.test/fhir/Observation/{obs['id']}/_history/{obs['meta']['versionId']}",
               "request": {"method": "PUT", "url": f"Observation/{obs['id']}"}}
    assert notify(backport_bundle("event-notification", [id_only])) == (
        200, {"kind": "event-notification", "delivered": 1})
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1


def test_an_unreadable_notification_is_kept_and_refused(vigil: Services) -> None:
    status, body = notify(b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    [dead] = vigil.dead_letters.list()
    assert (dead.reason, dead.payload) == ("invalid_notification", b"{not json")


def test_the_endpoint_is_closed_unless_the_source_is_rest_hook(tmp_path: Path) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "v"), clock=FixedClock(DAYTIME))
    install(services)
    try:
        assert notify(b"")[0] == 404
    finally:
        install(None)
        services.close()


@pytest.mark.parametrize("body, why", [
    (b'{"resourceType": "Observation", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper"),
    (b'{"resourceType": "Observation", "id": "o\\ud800", "meta": {"versionId": "1"}}', "surrogate"),
    (b'{"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"}, "valueQuantity": {"value": NaN}}',
     "NaN"),
])
def test_a_poison_notification_is_kept_and_refused_like_any_unreadable_one(vigil: Services, body: bytes,
                                                                          why: str) -> None:
    """A rest-hook body is FHIR JSON from outside, as a facade request body is: nesting past the
    parser's limit, a lone surrogate or NaN is a 400 with a dead letter (the server stops retrying),
    never an exception the server's retry would repeat forever."""
    status, answer = notify(body)
    assert status == 400 and why in answer["error"]
    [dead] = vigil.dead_letters.list()
    assert (dead.reason, dead.payload) == ("invalid_notification", body)
