"""Trigger functions accept both Event Grid schemas the Functions worker can hand them."""

from __future__ import annotations

import json

from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum

from triggers.fhir_events import event_payload

DATA = {"resourceType": "Observation", "resourceFhirAccount": "acct", "resourceFhirId": "o1",
        "resourceVersionId": 2}


def _decode(body: dict):
    return EventGridEventInConverter.decode(Datum(json.dumps(body), "json"), trigger_metadata=None)


def test_event_grid_schema() -> None:
    payload = event_payload(_decode({
        "id": "e1", "topic": "/t", "subject": "acct/Observation/o1", "data": DATA, "dataVersion": "2",
        "eventType": "Microsoft.HealthcareApis.FhirResourceUpdated", "eventTime": "2026-11-20T08:00:00Z",
        "metadataVersion": "1"}))
    assert (payload["eventType"], payload["data"]["resourceFhirId"]) == (
        "Microsoft.HealthcareApis.FhirResourceUpdated",
        "o1",
    )


def test_cloud_events_schema() -> None:
    payload = event_payload(_decode({
        "id": "e2", "source": "/t", "specversion": "1.0", "type": "Microsoft.HealthcareApis.FhirResourceCreated",
        "dataschema": "#2", "subject": "acct/Observation/o1", "time": "2026-11-20T08:00:00Z", "data": DATA}))
    assert (payload["eventType"], payload["topic"], payload["data"]["resourceVersionId"]) == (
        "Microsoft.HealthcareApis.FhirResourceCreated", "/t", 2)
