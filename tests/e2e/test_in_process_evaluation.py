"""With the embedded store, the host evaluates a batch's Observations right after writing them,
and the outbox still carries every event whose evaluation did not complete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fhirstore.paging import search_all
from handlers import fhir_events
from runtime.bootstrap import Services, bootstrap
from runtime.host import LocalHost
from runtime.settings import Settings
from tests.support.pipeline import add_patient, reading

CRISIS = {"systolic": 190, "diastolic": 112}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Services, LocalHost]]:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path))
    host = LocalHost(services)
    host.acquire()
    add_patient(services, "p1")
    assert host.run_until_idle(timeout_s=60)
    yield services, host
    host.release()
    services.close()


def issues(services: Services) -> list[dict]:
    return search_all(services.store, "DetectedIssue", {"patient": "Patient/p1"})


def test_readings_are_evaluated_in_process_and_their_events_settled(
        host: tuple[Services, LocalHost], monkeypatch: pytest.MonkeyPatch) -> None:
    services, h = host
    vreads: list[str] = []
    vread = services.store.vread
    monkeypatch.setattr(services.store, "vread", lambda t, *a: vreads.append(t) or vread(t, *a))
    relayed, invoked = h.stats.relayed_events, h.stats.invocations.get("on_fhir_event", 0)
    h.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", CRISIS),
                               reading("p1", "heart_rate", "2026-11-20T09:31:00-05:00", {"bpm": 70})])
    h.run_once()  # one round: ingest, and the rules, in the same invocation
    [issue] = issues(services)
    assert issue["code"]["coding"][0]["code"] == "htn-crisis"
    assert h.run_until_idle(timeout_s=60)
    assert h.stats.invocations.get("on_fhir_event", 0) == invoked  # no Observation went round the outbox
    assert h.stats.relayed_events == relayed
    assert services.store.outbox_size() == 0  # type: ignore[attr-defined]
    assert "Observation" not in vreads  # the version just written is evaluated as written


def test_an_evaluation_that_fails_in_process_is_delivered_by_the_relay(
        host: tuple[Services, LocalHost], monkeypatch: pytest.MonkeyPatch) -> None:
    services, h = host
    original = fhir_events.evaluate_observation
    failures = []

    def flaky(obs: dict, *args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(obs["id"])
            raise ConnectionError("a channel was unavailable")
        return original(obs, *args, **kwargs)

    monkeypatch.setattr(fhir_events, "evaluate_observation", flaky)
    invoked = h.stats.invocations.get("on_fhir_event", 0)
    h.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", CRISIS)])
    h.run_once()
    assert failures and issues(services) == []
    assert services.store.outbox_size() == 1  # type: ignore[attr-defined]
    assert h.run_until_idle(timeout_s=60)
    assert len(issues(services)) == 1
    assert h.stats.invocations.get("on_fhir_event") == invoked + 1
    # The same message again: nothing new written, nothing evaluated twice.
    sent = len(services.channels["outbox"].provider.messages())
    h.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", CRISIS)])
    assert h.run_until_idle(timeout_s=60)
    assert len(issues(services)) == 1 and len(services.channels["outbox"].provider.messages()) == sent


def test_the_http_ingest_route_evaluates_what_it_wrote_in_process(host: tuple[Services, LocalHost]) -> None:
    import azure.functions as func

    from runtime.bootstrap import install
    from triggers.http_api import http_ingest

    services, h = host
    install(services)
    relayed = h.stats.relayed_events
    body = reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", CRISIS)
    resp = http_ingest(func.HttpRequest("POST", "http://localhost/api/ingest", body=body))
    assert resp.status_code == 200
    [issue] = issues(services)  # opened before the response, with no relay round
    assert issue["code"]["coding"][0]["code"] == "htn-crisis"
    pending = services.store.outbox_pending(1000)  # type: ignore[attr-defined]
    assert "Observation" not in {event["data"]["resourceType"] for _, event in pending}  # its event settled
    assert h.run_until_idle(timeout_s=60)
    assert h.stats.relayed_events == relayed and len(issues(services)) == 1
