"""IoT Hub batches on the Event Hubs trigger: each event gets its own device properties.

With cardinality "many" the host sends one body per event and the per-event metadata as arrays
(`PropertiesArray`, `SystemPropertiesArray`, item i for event i), which azure-functions' own
`EventHubTriggerConverter.decode_multiple_events` turns into events that all share the batch's
metadata (`event.metadata`). The batches here are decoded by that converter from the binding data
the host sends for an IoT Hub built-in endpoint, so `_raw` sees exactly what the worker hands the
function on Azure — which the local host never does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum

import function_app
from common.clock import FixedClock
from runtime.bootstrap import bootstrap, install
from runtime.host_functions import registered_functions
from runtime.settings import Settings
from tests.support.pipeline import DAYTIME, add_patient, count
from triggers.device_messages import _raw

BODIES = [
    {"HeartRate": 88, "Systolic": 128, "Diastolic": 82},
    {"HeartRate": 131},
    {"Systolic": 141, "Diastolic": 90},
]
DEVICES = ["pat-a-dev", "pat-b-dev", "pat-c-dev"]
PATIENTS = ["pat-a", "pat-b", "pat-c"]
CREATED = ["2026-11-20T07:31:00.1234567Z", "2026-11-20T07:32:00Z", "2026-11-20T07:33:00Z"]


def _system_properties(i: int) -> dict[str, Any]:
    """What the Event Hubs extension puts in SystemPropertiesArray[i] for an IoT Hub message:
    the message's system properties plus the event's own position."""
    return {
        "iothub-connection-device-id": DEVICES[i],
        "iothub-connection-auth-method": '{"scope":"device","type":"sas","issuer":"iothub"}',
        "iothub-connection-auth-generation-id": f"63866{i}",
        "iothub-enqueuedtime": f"2026-11-20T07:3{i + 1}:01Z",
        "iothub-message-source": "Telemetry",
        "x-opt-sequence-number": 4100 + i,
        "x-opt-offset": str(8192 + 512 * i),
        "x-opt-enqueued-time": f"2026-11-20T07:3{i + 1}:01Z",
        "EnqueuedTimeUtc": f"2026-11-20T07:3{i + 1}:01Z",
        "SequenceNumber": 4100 + i,
        "Offset": str(8192 + 512 * i),
        "PartitionKey": None,
        "content-type": "application/json",
        "content-encoding": "utf-8",
    }


def _trigger_metadata(n: int, properties: list[Any] | None = None) -> dict[str, Datum]:
    """The binding data of a batch of n, as the worker receives it (JSON-typed data)."""
    system = [_system_properties(i) for i in range(n)]
    props = properties if properties is not None else [
        {"iothub-creation-time-utc": CREATED[i], "patientId": PATIENTS[i]} for i in range(n)]
    data = {
        "PartitionContext": {"ConsumerGroup": "$Default", "EventHubName": "vigil-devices",
                             "PartitionId": "2", "FullyQualifiedNamespace": "ihsuprodblres.servicebus.windows.net"},
        "EnqueuedTimeUtcArray": [s["EnqueuedTimeUtc"] for s in system],
        "OffsetArray": [s["Offset"] for s in system],
        "PartitionKeyArray": [None] * n,
        "SequenceNumberArray": [s["SequenceNumber"] for s in system],
        "PropertiesArray": props,
        "SystemPropertiesArray": system,
    }
    return {key: Datum(json.dumps(value), "json") for key, value in data.items()}


def _batch(data_type: str, properties: list[Any] | None = None) -> list[Any]:
    bodies = [json.dumps(b).encode() for b in BODIES]
    if data_type == "collection_bytes":
        datum = Datum(SimpleNamespace(bytes=bodies), "collection_bytes")
    else:  # IoT Hub's JSON bodies arrive as one JSON array
        datum = Datum(json.dumps(BODIES), "json")
    return EventHubTriggerConverter.decode(datum, trigger_metadata=_trigger_metadata(len(BODIES), properties))


@pytest.mark.parametrize("data_type", ["collection_bytes", "json"])
def test_each_event_of_a_batch_takes_its_own_item_of_the_metadata_arrays(data_type: str) -> None:
    events = _batch(data_type)
    raws = [_raw(e, i) for i, e in enumerate(events)]

    assert [json.loads(r.body) for r in raws] == BODIES
    assert [r.system_properties["iothub-connection-device-id"] for r in raws] == DEVICES
    assert [r.properties for r in raws] == [
        {"iothub-creation-time-utc": CREATED[i], "patientId": PATIENTS[i]} for i in range(3)]
    assert [r.sequence_number for r in raws] == [4100, 4101, 4102]
    # Key names stay as IoT Hub wrote them: MedTech's IotJsonPathContent reads them so.
    assert raws[1].system_properties["iothub-enqueuedtime"] == "2026-11-20T07:32:01Z"


def test_an_event_without_its_item_gets_empty_properties_not_a_neighbours() -> None:
    # A null item (a message with no application properties) and an array shorter than the batch.
    events = _batch("collection_bytes", properties=[{"patientId": "pat-a"}, None])
    raws = [_raw(e, i) for i, e in enumerate(events)]
    assert [r.properties for r in raws] == [{"patientId": "pat-a"}, {}, {}]
    assert raws[2].system_properties["iothub-connection-device-id"] == "pat-c-dev"


def test_a_single_event_reads_the_unbatched_metadata() -> None:
    metadata = {"Properties": Datum(json.dumps({"patientId": "pat-a"}), "json"),
                "SystemProperties": Datum(json.dumps(_system_properties(0)), "json")}
    event = EventHubTriggerConverter.decode(Datum(json.dumps(BODIES[0]), "string"), trigger_metadata=metadata)
    raw = _raw(event, 0)
    assert raw.properties == {"patientId": "pat-a"}
    assert raw.system_properties["iothub-connection-device-id"] == "pat-a-dev"


def test_a_batch_through_the_trigger_function_files_each_reading_under_its_own_device(tmp_path: Path) -> None:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "data", templates_preset="iot-hub"),
                         clock=FixedClock(DAYTIME))
    try:
        for patient in PATIENTS:
            add_patient(services, patient, programs=())
        install(services)
        ingest = {fn.get_function_name(): fn.get_user_function()
                  for fn in registered_functions(function_app.app)}["ingest_device_messages"]
        ingest(_batch("collection_bytes"))

        assert services.dead_letters.counts_by_reason() == {}
        found = {}
        for patient in PATIENTS:
            bundle = services.store.search("Observation", {"subject": f"Patient/{patient}"})
            found[patient] = sorted(
                (r["device"]["reference"], r["effectivePeriod"]["start"][:19])
                for r in bundle.resources)
        assert found == {
            "pat-a": [("Device/pat-a-dev", "2026-11-20T07:31:00")] * 2,  # heart rate + blood pressure
            "pat-b": [("Device/pat-b-dev", "2026-11-20T07:32:00")],
            "pat-c": [("Device/pat-c-dev", "2026-11-20T07:33:00")],
        }
        assert count(services, "Observation") == 4
    finally:
        install(None)
        services.close()
