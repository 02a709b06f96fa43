"""The Event Grid webhook of `vigil serve`, driven by the azure-eventgrid SDK and raw handshakes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from fhirstore.events import event_grid_event
from handlers import fhir_events
from runtime.event_webhook import ROUTE
from runtime.http_server import running_server
from tests.support.pipeline import add_patient, make_host

TOKEN = "webhook-token"


@pytest.fixture
def served(data_dir: Path) -> Iterator[tuple[object, str]]:
    host = make_host(data_dir, local_token=TOKEN)
    host.acquire()
    add_patient(host.services, "p1")
    assert host.run_until_idle(timeout_s=30)
    with running_server(host, TOKEN) as url:
        yield host, url
    host.release()
    host.services.close()


def _publisher(url: str) -> EventGridPublisherClient:
    # The SDK's own serialization of events, posted as Event Grid posts to a webhook; the key goes
    # in the endpoint's query string, as a subscription's endpoint URL carries it.
    return EventGridPublisherClient(f"{url}{ROUTE}?code={TOKEN}", AzureKeyCredential("unused"))


def test_subscription_validation_event_from_the_sdk_is_answered_with_its_code(served) -> None:
    _, url = served
    code = str(uuid.uuid4())
    event = EventGridEvent(subject="", event_type="Microsoft.EventGrid.SubscriptionValidationEvent",
                           data={"validationCode": code, "validationUrl": "https://example.invalid/validate"},
                           data_version="1")
    captured: list[httpx.Response] = []

    with _publisher(url) as client:
        client.send([event], raw_response_hook=lambda r: captured.append(r.http_response))
    response = captured[0]
    assert response.status_code == 200
    assert json.loads(response.text()) == {"validationResponse": code}


def test_validation_needs_the_key(served) -> None:
    _, url = served
    body = [{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "",
             "data": {"validationCode": "abc"}, "dataVersion": "1", "eventTime": "2026-11-20T00:00:00Z"}]
    assert httpx.post(f"{url}{ROUTE}", json=body).status_code == 401
    assert httpx.post(f"{url}{ROUTE}", json=body, headers={"x-functions-key": TOKEN}).json() == {
        "validationResponse": "abc"}


def test_cloudevents_abuse_protection_handshake(served) -> None:
    _, url = served
    resp = httpx.options(f"{url}{ROUTE}?code={TOKEN}", headers={"WebHook-Request-Origin": "eventgrid.azure.net",
                                                                "WebHook-Request-Rate": "120"})
    assert resp.status_code == 200
    assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert resp.headers["WebHook-Allowed-Rate"] == "*"
    assert httpx.options(f"{url}{ROUTE}?code={TOKEN}").status_code == 400
    assert httpx.options(f"{url}{ROUTE}", headers={"WebHook-Request-Origin": "x"}).status_code == 401


def _observation(host) -> dict:
    return host.services.store.create({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-20T08:00:00Z",
        "valueQuantity": {"value": 66, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }).resource


def _fhir_event(resource: dict) -> dict:
    return event_grid_event(action="created", resource_type="Observation", resource_id=resource["id"],
                            version_id=resource["meta"]["versionId"], account="remote.fhir.example",
                            topic="/subscriptions/x/workspaces/w", at=datetime(2026, 11, 20, tzinfo=UTC))


def test_event_grid_schema_events_run_the_fhir_event_function(served) -> None:
    host, url = served
    assert host.run_until_idle(timeout_s=30)
    host.services.store.outbox_done([seq for seq, _ in host.services.store.outbox_pending(10_000)])
    before = host.stats.invocations.get("on_fhir_event", 0)
    obs = _observation(host)
    host.services.store.outbox_done([seq for seq, _ in host.services.store.outbox_pending(10_000)])
    payload = _fhir_event(obs)
    event = EventGridEvent(subject=payload["subject"], event_type=payload["eventType"], data=payload["data"],
                           data_version=payload["dataVersion"], topic=payload["topic"], id=payload["id"])
    with _publisher(url) as client:
        client.send([event])
        client.send([event])  # Event Grid delivers at least once: a redelivery adds nothing
    assert host.run_until_idle(timeout_s=30)
    ran = host.stats.invocations.get("on_fhir_event", 0) - before
    assert ran == 1, f"on_fhir_event ran {ran} times (stats {host.stats})"
    assert host.stats.failures.get("on_fhir_event", 0) == 0, host.stats


def test_cloudevents_batches_are_accepted(served) -> None:
    host, url = served
    obs = _observation(host)
    host.services.store.outbox_done([seq for seq, _ in host.services.store.outbox_pending(10_000)])
    payload = _fhir_event(obs)
    event = CloudEvent(source=payload["topic"], type=payload["eventType"], data=payload["data"],
                       subject=payload["subject"], id=payload["id"])
    before = host.stats.invocations.get("on_fhir_event", 0)
    with _publisher(url) as client:
        client.send([event])
    assert host.run_until_idle(timeout_s=30)
    assert host.stats.invocations.get("on_fhir_event", 0) - before == 1
    assert host.stats.failures.get("on_fhir_event", 0) == 0


def test_event_types_vigil_does_not_handle_are_ignored_and_counted_not_dead_lettered(served) -> None:
    host, url = served
    before = fhir_events.IGNORED_EVENT_TYPES["Microsoft.HealthcareApis.DicomImageCreated"]
    dicom = [{"id": str(uuid.uuid4()), "eventType": "Microsoft.HealthcareApis.DicomImageCreated",
              "subject": "dicom/1", "data": {"imageStudyInstanceUid": "1.2.3"}, "dataVersion": "1",
              "eventTime": "2026-11-20T00:00:00Z", "topic": "t"}]
    resp = httpx.post(f"{url}{ROUTE}?code={TOKEN}", json=dicom)
    assert resp.status_code == 200
    assert resp.json()["types"] == {"Microsoft.HealthcareApis.DicomImageCreated": 1}
    assert host.run_until_idle(timeout_s=30)
    assert fhir_events.IGNORED_EVENT_TYPES["Microsoft.HealthcareApis.DicomImageCreated"] == before + 1
    assert host.services.dead_letters.count() == 0


def test_the_event_grid_function_ignores_a_validation_event_it_is_handed(served) -> None:
    """On Azure the trigger, not this webhook, may see Event Grid's own events: ignored and counted."""
    host, _ = served
    name = "Microsoft.EventGrid.SubscriptionValidationEvent"
    before = fhir_events.IGNORED_EVENT_TYPES[name]
    event = {"id": "v1", "eventType": name, "subject": "", "data": {"validationCode": "abc"},
             "dataVersion": "1", "eventTime": "2026-11-20T00:00:00Z", "topic": "t"}
    queue = next(s.source for s in host.of_kind("eventGridTrigger") if s.name == "on_fhir_event")
    host.bus.publish(queue, json.dumps(event).encode(), msg_id="v1")
    assert host.run_until_idle(timeout_s=30)
    assert fhir_events.IGNORED_EVENT_TYPES[name] == before + 1
    assert host.services.dead_letters.count() == 0
    assert host.stats.failures.get("on_fhir_event", 0) == 0


def test_malformed_deliveries_are_a_400(served) -> None:
    _, url = served
    for body in (b"{", b"[]", b"[1]", b'[{"eventType":"x"}]', b"[" * 5000):
        resp = httpx.post(f"{url}{ROUTE}?code={TOKEN}", content=body)
        assert resp.status_code == 400, body[:20]


def test_a_single_structured_cloudevent_is_accepted(served) -> None:
    host, url = served
    obs = _observation(host)
    host.services.store.outbox_done([seq for seq, _ in host.services.store.outbox_pending(10_000)])
    payload = _fhir_event(obs)
    cloud_event = {"specversion": "1.0", "id": payload["id"], "type": payload["eventType"], "source": payload["topic"],
                   "subject": payload["subject"], "time": "2026-11-20T00:00:00Z", "data": payload["data"]}
    before = host.stats.invocations.get("on_fhir_event", 0)
    resp = httpx.post(f"{url}{ROUTE}", content=json.dumps(cloud_event),
                      headers={"Content-Type": "application/cloudevents+json; charset=utf-8", "x-functions-key": TOKEN})
    assert resp.status_code == 200 and resp.json()["queued"] == 1
    assert host.run_until_idle(timeout_s=30)
    assert host.stats.invocations.get("on_fhir_event", 0) - before == 1
    assert host.stats.failures.get("on_fhir_event", 0) == 0
