"""The polling event source: a FHIR server that pushes nothing still gets its readings evaluated.

Vigil runs with `VIGIL_FHIR_URL` pointing at the project's loopback FHIR facade (a separate
embedded store playing "some R4 server"); the `pull_fhir_changes` timer function finds the changes
by `_lastUpdated` and feeds them to the same handler `on_fhir_event` uses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import function_app
from common.clock import FixedClock
from fhirstore.event_source import PushedEvents, parse_instant
from fhirstore.paging import search_all
from fhirstore.polling_source import Cursor, FhirCursorStore, PollingSource
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import RawMessage, handle_device_messages
from runtime.bootstrap import Services, bootstrap, ingest_deps, install
from runtime.event_sources import event_source, source_kind
from runtime.host_functions import registered_functions
from runtime.settings import Settings, SettingsError
from tests.support.fhir_server import serve_store
from tests.support.pipeline import DAYTIME, add_patient, reading

PULL = {f.get_function_name(): f.get_user_function() for f in registered_functions(function_app.app)}[
    "pull_fhir_changes"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, FixedClock]]:
    clock = FixedClock(DAYTIME)
    with SqliteFhirStore(tmp_path / "server.db", clock=clock) as db, serve_store(db) as base:
        yield base, clock


@pytest.fixture
def vigil(server: tuple[str, FixedClock], tmp_path: Path) -> Iterator[Services]:
    base, _ = server
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "vigil", fhir_url=base), clock=FixedClock(DAYTIME))
    install(services)
    yield services
    install(None)
    services.close()


def ingest(services: Services, *bodies: bytes) -> None:
    handle_device_messages([RawMessage(body=b) for b in bodies], ingest_deps(services))


def at(services: Services, server: tuple[str, FixedClock], offset: timedelta) -> None:
    """Move both clocks: Vigil's, and the server's (which stamps lastUpdated)."""
    services.clock.set(DAYTIME + offset)  # type: ignore[attr-defined]
    server[1].set(DAYTIME + offset)


def test_auto_chooses_polling_for_a_server_that_is_not_health_data_services(tmp_path: Path) -> None:
    def kind(**env: Any) -> str:
        return source_kind(Settings.from_env({}, data_dir=tmp_path, **env))

    assert kind() == "outbox"
    assert kind(fhir_url="https://ws-fhir.fhir.azurehealthcareapis.com") == "eventgrid"
    assert kind(fhir_url="http://hapi.local:8080/fhir") == "poll"
    assert kind(fhir_url="http://hapi.local:8080/fhir", event_source="eventgrid") == "eventgrid"
    with pytest.raises(SettingsError, match="VIGIL_EVENT_SOURCE"):
        kind(event_source="kafka")


def test_a_crisis_reading_on_a_polled_server_opens_one_episode_and_a_replay_adds_nothing(
        vigil: Services, server: tuple[str, FixedClock]) -> None:
    s = vigil
    assert isinstance(event_source(s), PollingSource)
    add_patient(s, "p1")
    PULL(None)  # the first pull places the cursor: what was there before is not replayed
    at(s, server, timedelta(seconds=30))
    ingest(s, reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", {"systolic": 186, "diastolic": 112}))
    assert search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"}) == []  # nothing pushed it

    at(s, server, timedelta(minutes=1))
    PULL(None)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    assert issue["code"]["coding"][0]["code"] == "htn-crisis"
    assert s.store.read("Task", issue["id"])["status"] == "requested"
    sent = len(s.channels["outbox"].provider.messages())
    assert sent >= 1

    # The next pulls find nothing new; a replay of every change from the start opens nothing more.
    at(s, server, timedelta(minutes=2))
    assert event_source(s).pull(lambda p: pytest.fail("delivered again")) == 0
    cursors = FhirCursorStore(s.store)
    for rtype in ("Observation", "QuestionnaireResponse"):
        cursors.save("poll", rtype, Cursor(DAYTIME - timedelta(hours=1)))
    PULL(None)
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1
    assert len(s.channels["outbox"].provider.messages()) == sent


def test_a_failed_delivery_is_retried_from_the_saved_cursor(vigil: Services, server: tuple[str, FixedClock]) -> None:
    s = vigil
    add_patient(s, "p1", programs=())
    source = event_source(s)
    source.pull(lambda p: None)
    at(s, server, timedelta(seconds=10))
    for minute in range(3):
        ingest(s, reading("p1", "heart_rate", f"2026-11-20T09:3{minute}:00-05:00", {"bpm": 70 + minute}))
        at(s, server, timedelta(seconds=11 + minute))
    at(s, server, timedelta(minutes=1))

    got: list[str] = []

    def flaky(payload: dict) -> None:
        if len(got) == 1:
            got.append("boom")
            raise RuntimeError("FHIR server unavailable")
        got.append(payload["data"]["resourceFhirId"])

    with pytest.raises(RuntimeError):
        source.pull(flaky)
    again: list[str] = []
    assert source.pull(lambda p: again.append(p["data"]["resourceFhirId"])) == 2
    assert got[0] not in again and len(set(again)) == 2  # the failed one and the one after it, once each


def test_many_changes_at_one_instant_are_each_delivered_once(tmp_path: Path) -> None:
    """A transaction stamps every resource with one lastUpdated: more of them than a page holds."""
    clock = FixedClock(DAYTIME)
    with SqliteFhirStore(tmp_path / "s.db", clock=clock) as db:
        source = PollingSource(db, FhirCursorStore(db), clock, account="t", types=("Observation",),
                               page_size=10, lag=timedelta(seconds=5), start=DAYTIME - timedelta(minutes=1))
        db.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                          "code": {"text": "x"}}, "request": {"method": "PUT", "url": f"Observation/o{i}"}}
            for i in range(25)]})
        clock.set(DAYTIME + timedelta(minutes=1))
        seen: list[str] = []
        assert source.pull(lambda p: seen.append(p["data"]["resourceFhirId"])) == 25
        assert sorted(seen) == sorted(f"o{i}" for i in range(25))
        assert source.pull(lambda p: seen.append("again")) == 0
        # An update later is a new version: delivered, once.
        db.update({"resourceType": "Observation", "id": "o3", "status": "amended", "code": {"text": "x"}})
        clock.set(DAYTIME + timedelta(minutes=2))
        events: list[dict] = []
        assert source.pull(events.append) == 1
        assert (events[0]["data"]["resourceVersionId"], events[0]["eventType"]) == (
            2, "Microsoft.HealthcareApis.FhirResourceUpdated")


def test_pushed_sources_read_nothing(vigil: Services) -> None:
    assert PushedEvents("eventgrid").pull(lambda p: pytest.fail("nothing to pull")) == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-20T15:00:00.1234567Z", "2026-11-20T15:00:00.123456+00:00"),
    ("2026-11-20T15:00:00Z", "2026-11-20T15:00:00+00:00"),
    ("2026-11-20T10:00:00.5-05:00", "2026-11-20T10:00:00.500000-05:00"),
])
def test_instants_with_any_precision(text: str, expected: str) -> None:
    assert parse_instant(text).isoformat() == expected
    assert parse_instant("2026-11-20T15:00:00") is None  # no offset
