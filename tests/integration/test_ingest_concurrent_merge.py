"""Two batches merging into one Observation at the same time lose nothing.

Heart-rate samples are grouped per hour into one SampledData Observation (periodInterval 60), so
two batches carrying samples of the same hour both merge into it. The batch whose merge was
computed from a version another writer has since replaced is refused by If-Match and delivered
again; the second delivery merges on top, so the Observation ends with every sample.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.clock import FixedClock
from fhirstore.errors import PreconditionFailed
from fhirstore.sqlite import SqliteFhirStore
from handlers.ingest import IngestDeps, RawMessage, handle_device_messages
from ingest.deadletter import SqliteDeadLetterStore
from ingest.identity import IdentityResolver
from ingest.templates.reload import TemplateFiles

DEVICE = {"templateType": "CollectionContent", "template": [{"templateType": "CalculatedContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@hr)]", "deviceIdExpression": "$.Body.deviceId",
    "timestampExpression": "$.Body.time", "values": [{"valueName": "hr", "valueExpression": "$.Body.hr",
                                                     "required": True}]}}]}
FHIR = {"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir", "template": {
    "codes": [{"code": "8867-4", "system": "http://loinc.org", "display": "Heart rate"}], "periodInterval": 60,
    "typeName": "heartrate", "value": {"defaultPeriod": 60000, "unit": "/min", "valueName": "hr",
                                       "valueType": "SampledData"}}}]}
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def batch(*samples: tuple[str, int]) -> list[RawMessage]:
    return [RawMessage(json.dumps({"deviceId": "hr-1", "time": t, "hr": v}).encode()) for t, v in samples]


A = batch(("2026-11-20T08:00:00Z", 61), ("2026-11-20T08:01:00Z", 62))
B = batch(("2026-11-20T08:02:00Z", 73), ("2026-11-20T08:03:00Z", 74))


@pytest.fixture
def files(tmp_path: Path) -> TemplateFiles:
    (tmp_path / "device.json").write_text(json.dumps(DEVICE))
    (tmp_path / "fhir.json").write_text(json.dumps(FHIR))
    return TemplateFiles(tmp_path / "device.json", tmp_path / "fhir.json")


def deps_for(store: SqliteFhirStore, tmp_path: Path, files: TemplateFiles) -> IngestDeps:
    return IngestDeps(store=store, dead_letters=SqliteDeadLetterStore(tmp_path / "dead.db"), templates=files.current,
                      identity=IdentityResolver(store, "Lookup"), clock=FixedClock(NOW))


class InterleavingStore(SqliteFhirStore):
    """The real embedded store; the first time this batch reads the Observation, another batch (on
    its own connection to the same file) merges into it: the interleaving two instances can hit."""

    def __init__(self, path: Path, meanwhile: Any) -> None:
        super().__init__(path)
        self.meanwhile = meanwhile

    def read(self, resource_type: str, id: str) -> dict[str, Any]:
        found = super().read(resource_type, id)
        if resource_type == "Observation" and self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return found


def samples(store: SqliteFhirStore) -> tuple[list[str], str]:
    [obs] = store.search("Observation", {}).resources
    return obs["valueSampledData"]["data"].split(), obs["meta"]["versionId"]


def test_a_merge_computed_from_a_replaced_version_is_retried_and_keeps_both_batches(tmp_path: Path,
                                                                                   files: TemplateFiles) -> None:
    path = tmp_path / "fhir.db"
    with SqliteFhirStore(path) as setup:
        setup.update({"resourceType": "Patient", "id": "pat-1"})
        setup.update({"resourceType": "Device", "id": "dev-1", "identifier": [{"value": "hr-1"}],
                      "patient": {"reference": "Patient/pat-1"}})
        assert (
            handle_device_messages(batch(("2026-11-20T08:04:00Z", 65)), deps_for(setup, tmp_path, files)).created == 1
        )

    other = SqliteFhirStore(path)
    store = InterleavingStore(path, lambda: handle_device_messages(B, deps_for(other, tmp_path, files)))
    with pytest.raises(PreconditionFailed):  # the trigger fails: the batch will be delivered again
        handle_device_messages(A, deps_for(store, tmp_path, files))
    data, version = samples(store)
    assert (data[2:5], version) == (["73", "74", "65"], "2")  # B's merge stands; A wrote nothing

    report = handle_device_messages(A, deps_for(store, tmp_path, files))  # the re-delivery
    assert (report.updated, report.dead_lettered) == (1, 0)
    data, version = samples(store)
    assert (data[:5], version) == (["61", "62", "73", "74", "65"], "3")
    other.close()
    store.close()


@pytest.mark.parametrize("stored_first", [True, False])
def test_two_groups_of_one_batch_landing_in_one_observation_are_written_once_with_both(
        tmp_path: Path, stored_first: bool) -> None:
    """Readings of one hour, one naming its patient and one not, are two groups (the patient id is
    part of the group) but one Observation: the batch merges them and writes it once, instead of
    conflicting with itself on every delivery (or, for a new Observation, keeping only one)."""
    device = json.loads(json.dumps(DEVICE))
    device["template"][0]["template"]["patientIdExpression"] = "$.Body.pid"
    (tmp_path / "device.json").write_text(json.dumps(device))
    (tmp_path / "fhir.json").write_text(json.dumps(FHIR))
    files = TemplateFiles(tmp_path / "device.json", tmp_path / "fhir.json")
    with SqliteFhirStore(tmp_path / "fhir.db") as store:
        store.update({"resourceType": "Patient", "id": "pat-1"})
        store.update({"resourceType": "Device", "id": "dev-1", "identifier": [{"value": "hr-1"}],
                      "patient": {"reference": "Patient/pat-1"}})
        deps = deps_for(store, tmp_path, files)
        if stored_first:
            handle_device_messages(batch(("2026-11-20T08:04:00Z", 65)), deps)
        both = [RawMessage(json.dumps({"deviceId": "hr-1", "time": "2026-11-20T08:00:00Z", "hr": 61,
                                       "pid": "pat-1"}).encode()), *batch(("2026-11-20T08:01:00Z", 62))]
        report = handle_device_messages(both, deps)
        assert (report.created, report.updated, report.dead_lettered) == ((0, 1, 0) if stored_first else (1, 0, 0))
        data, version = samples(store)
        assert data[:2] == ["61", "62"] and version == ("2" if stored_first else "1")
        assert (stored_first and data[4] == "65") or not stored_first
        assert handle_device_messages(both, deps).unchanged == 1  # a re-delivery writes nothing
