"""Device messages in → FHIR Observations out, with every rejected message dead-lettered.

The same handler serves the Event Hubs trigger (a batch), the local bus and the HTTP ingest
endpoint. Messages are mapped with MedTech-compatible templates (ingest/templates), identities are
resolved against the FHIR store on every batch (no stale device→patient cache), and the batch's
Observations are written in ONE FHIR transaction where the server allows. Safe to re-deliver:
Observation ids are deterministic and an unchanged merge writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from common.clock import Clock
from fhirstore.errors import FhirError, ResourceGone, ResourceNotFound
from fhirstore.port import FhirStore
from ingest.deadletter import DeadLetterSink
from ingest.identity import IdentityResolver
from ingest.plausibility import check_observation
from ingest.reading_time import DEFAULT_MAX_FUTURE_SKEW, check_reading_times
from ingest.templates import group_measurements
from ingest.templates.errors import MappingFailure, MessageError
from ingest.templates.fhir import ObservationChange
from ingest.templates.grouping import MeasurementGroup
from ingest.templates.reload import TemplatePair

log = logging.getLogger(__name__)

# FHIR errors worth retrying the whole batch for (the server, not the message, is the problem).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Also retried: 412, another writer changed an Observation this batch merged into (If-Match). The
# re-delivered batch reads the new version and merges again, so neither writer's values are lost.
# (A *create* racing another create of the same Observation is not guarded: docs/decisions.md.)
RETRY_BATCH_STATUSES = TRANSIENT_STATUSES | {412}


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    system_properties: dict[str, Any] = field(default_factory=dict)
    partition_key: str | None = None
    sequence_number: int | None = None


@dataclass(frozen=True)
class IngestDeps:
    store: FhirStore
    dead_letters: DeadLetterSink
    templates: Callable[[], TemplatePair]  # the current templates (reloaded when the files change)
    identity: IdentityResolver
    clock: Clock
    topic: str = "device-messages"
    max_bytes: int = 256 * 1024
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW  # readings dated further ahead are dead-lettered


@dataclass
class IngestReport:
    received: int = 0
    dead_lettered: int = 0
    created: int = 0  # Observations
    updated: int = 0
    unchanged: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return self.received - self.dead_lettered

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "accepted": self.accepted, "dead_lettered": self.dead_lettered,
            "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
            "reasons": dict(self.reasons),
        }


@dataclass
class _Write:
    change: ObservationChange
    messages: set[int]


def handle_device_messages(messages: list[RawMessage], deps: IngestDeps) -> IngestReport:
    """Ingest a batch. Bad messages are parked with a reason; the rest of the batch goes on.
    A transient FHIR failure raises, so the trigger fails and the batch is delivered again."""
    report = IngestReport(received=len(messages))
    parked: set[int] = set()
    pair = deps.templates()
    now = deps.clock.now()

    def park(i: int, error: MessageError) -> None:
        if i in parked:
            return
        parked.add(i)
        _park(deps, messages[i], error, pair.version, report)

    owners: dict[int, int] = {}  # id(measurement) -> index of the message it came from
    measurements = []
    for i, message in enumerate(messages):
        if len(message.body) > deps.max_bytes:
            park(i, MessageError("oversized", f"message is {len(message.body)} bytes; the limit is {deps.max_bytes}"))
            continue
        try:
            parsed = json.loads(message.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            park(i, MessageError("invalid_json", f"not valid JSON{where}"))
            continue
        result = pair.devices.normalize(parsed, properties=message.properties,
                                        system_properties=message.system_properties, ingested_at=now)
        if not result.ok:
            park(i, result.errors[0])
            continue
        for m in result.measurements:
            owners[id(m)] = i
        measurements.extend(result.measurements)

    # Two groups of one batch can land in one Observation (e.g. readings of the same hour with and
    # without a patient id): the later one merges onto what the earlier one will write, and the
    # batch writes each Observation once (If-Match on the stored version, see _put).
    pending: dict[str, dict[str, Any]] = {}

    def existing(oid: str) -> dict[str, Any] | None:
        return pending[oid] if oid in pending else _existing(deps.store, oid)

    def changes_for(group: MeasurementGroup) -> list[ObservationChange]:
        check_reading_times(group.measurements, now, deps.max_future_skew)
        who = deps.identity.resolve(group)
        changes = pair.fhir.observations(group, patient_id=who.patient_id, device_id=who.device_id,
                                         encounter_id=who.encounter_id, existing=existing, now=now)
        for change in changes:
            check_observation(change.resource)
        return changes

    writes: dict[str, _Write] = {}  # Observation id -> what the batch writes there

    def add(changes: list[ObservationChange], sources: set[int]) -> None:
        for change in changes:
            earlier = writes.get(change.id)
            if earlier is None:
                writes[change.id] = _Write(change, set(sources))
                continue
            # Merged onto the earlier change (see existing()): it holds both. A create stays a create.
            kept = earlier.change if change.action == "noop" else _combine(earlier.change, change)
            writes[change.id] = _Write(kept, earlier.messages | sources)
        for change in changes:
            if change.action != "noop":
                pending[change.id] = change.resource

    for group in group_measurements(measurements):
        sources = {owners[id(m)] for m in group.measurements if id(m) in owners} - parked
        try:
            add(changes_for(group), sources)
            continue
        except MappingFailure as failure:
            if len(sources) <= 1:
                for i in sources:
                    park(i, failure.to_error(type_name=group.type))
                continue
        # Several messages share the group: map them one by one so only the culprit is parked.
        for i in sorted(sources):
            for sub in group_measurements([m for m in group.measurements if owners.get(id(m)) == i]):
                try:
                    add(changes_for(sub), {i})
                except MappingFailure as failure:
                    park(i, failure.to_error(type_name=sub.type))

    _write(deps, list(writes.values()), messages, parked, report, pair.version)
    if report.dead_lettered:
        log.warning("ingest batch: %d of %d messages dead-lettered %s", report.dead_lettered, report.received,
                    dict(report.reasons))
    return report


def _combine(earlier: ObservationChange, later: ObservationChange) -> ObservationChange:
    """The later change (merged onto the earlier one's resource), written as the earlier one would
    be: a create when the batch created the Observation."""
    if earlier.action == "create":
        return replace(later, action="create")
    return later


def _existing(store: FhirStore, obs_id: str) -> dict[str, Any] | None:
    try:
        return store.read("Observation", obs_id)
    except (ResourceNotFound, ResourceGone):
        return None


def _write(deps: IngestDeps, writes: list[_Write], messages: list[RawMessage], parked: set[int],
           report: IngestReport, version: int) -> None:
    todo = [w for w in writes if w.change.action != "noop" and not (w.messages and w.messages <= parked)]
    report.unchanged += len(writes) - len(todo)
    if not todo:
        return
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": w.change.resource, "request": _put(w.change)} for w in todo
    ]}
    try:
        response = deps.store.transaction(bundle)
    except FhirError as exc:
        if exc.status in RETRY_BATCH_STATUSES:
            raise
        # One entry spoiled the all-or-nothing transaction: write one by one to find it.
        for w in todo:
            _write_one(deps, w, messages, parked, report, version)
        return
    for entry in response.get("entry", []):
        status = str((entry.get("response") or {}).get("status", ""))
        if status.startswith("201"):
            report.created += 1
        else:
            report.updated += 1


def _merged_version(change: ObservationChange) -> str | None:
    """The version a merge was computed from: written back only if it is still the current one."""
    if change.action != "update":
        return None
    return (change.resource.get("meta") or {}).get("versionId")


def _put(change: ObservationChange) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PUT", "url": f"Observation/{change.id}"}
    version = _merged_version(change)
    if version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return request


def _write_one(deps: IngestDeps, w: _Write, messages: list[RawMessage], parked: set[int], report: IngestReport,
               version: int) -> None:
    try:
        result = deps.store.update(w.change.resource, if_match=_merged_version(w.change))
    except FhirError as exc:
        if exc.status in RETRY_BATCH_STATUSES:
            raise
        for i in sorted(w.messages - parked):
            parked.add(i)
            _park(deps, messages[i], MessageError("fhir_rejected", f"FHIR server answered {exc.status}: {exc}"),
                  version, report)
        return
    if result.outcome == "created":
        report.created += 1
    elif result.outcome == "updated":
        report.updated += 1
    else:
        report.unchanged += 1


def _park(deps: IngestDeps, message: RawMessage, error: MessageError, version: int, report: IngestReport) -> None:
    where = {k: v for k, v in {"template_index": error.template_index, "type_name": error.type_name,
                               "field": error.field, "expression": error.expression}.items() if v is not None}
    detail = error.detail + ("" if not where else " [" + ", ".join(f"{k}={v}" for k, v in where.items()) + "]")
    deps.dead_letters.add(
        topic=deps.topic, reason=error.reason, detail=detail, payload=message.body, source="ingest",
        properties={"partition_key": message.partition_key, "sequence_number": message.sequence_number,
                    "templates_version": version, **where, **message.properties},
    )
    report.dead_lettered += 1
    report.reasons[error.reason] += 1
