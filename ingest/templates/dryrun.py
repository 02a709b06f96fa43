"""The dry run of `vigil templates check`: sample messages -> measurements -> Observations.

Every sample goes through the pipeline's own normalization (`DeviceTemplateSet.normalize`, one
`{Body, Properties, SystemProperties}` envelope). Observations are built per message, or, when
asked (`merge`), for all samples as one delivery, as the ingest handler builds a batch: the
measurements of all messages are grouped together, and Observation groups that share an id (two
messages' readings in one hour of a SampledData, one correlation id) fold into one Observation.
Patient and Device ids are those Create mode would assign (sha256 of the identifier): a dry run
looks nothing up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from common.jsonnum import loads
from ingest.templates.device import DeviceTemplateSet, NormalizeResult
from ingest.templates.errors import MappingFailure, MessageError
from ingest.templates.fhir import FhirTemplateSet, ObservationChange
from ingest.templates.grouping import MeasurementGroup, group_measurements
from ingest.templates.measurement import Measurement
from ingest.templates.observation import sha256_id
from ingest.templates.reading_time import DEFAULT_MAX_FUTURE_SKEW, check_reading_times

_ENVELOPE_KEYS = frozenset({"Body", "Properties", "SystemProperties"})


@dataclass
class MessageCheck:
    number: int  # 1-based position in the messages given
    measurements: list[Measurement] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)  # empty when merged (see the batch)
    errors: list[MessageError] = field(default_factory=list)  # why (part of) it would be dead-lettered
    notes: list[str] = field(default_factory=list)  # e.g. an Observation fhir.resources rejects

    @property
    def dead_letter(self) -> bool:
        return bool(self.errors)


def dry_run(messages: list[Any], devices: DeviceTemplateSet, fhir: FhirTemplateSet | None, *,
            validate_fhir: bool = True, merge: bool = False, now: datetime | None = None,
            max_future_skew: timedelta | None = None) -> tuple[list[MessageCheck], list[dict[str, Any]] | None]:
    """(one check per message, the batch's Observations when `merge` else None).

    `now` is the arrival time the samples are judged at (default: the wall clock); a reading dated
    more than `max_future_skew` after it is dead-lettered as `future_reading`, as the ingest
    handler does (ingest/templates/reading_time.py)."""
    arrival = now or datetime.now(UTC)
    checks = []
    for number, message in enumerate(messages, start=1):
        result = normalize_sample(message, devices, ingested_at=arrival)
        check = MessageCheck(number, measurements=list(result.measurements), errors=list(result.errors))
        if check.measurements and not check.errors:
            try:
                check_reading_times(check.measurements, arrival, max_future_skew or DEFAULT_MAX_FUTURE_SKEW)
            except MappingFailure as failure:
                check.errors.append(failure.to_error())
        checks.append(check)
    if fhir is None:
        return checks, [] if merge else None
    if not merge:
        for check in checks:
            if check.measurements:
                check.observations = _observations(check.measurements, fhir, {check.number: check}, validate_fhir)
        return checks, None
    by_number = {c.number: c for c in checks if not c.errors}  # a dead-lettered message writes nothing
    batch = [m for c in by_number.values() for m in c.measurements]
    return checks, _observations(batch, fhir, by_number, validate_fhir)


def normalize_sample(
    message: Any, devices: DeviceTemplateSet, *, ingested_at: datetime | None = None
) -> NormalizeResult:
    """A sample message through the pipeline's own path (`DeviceTemplateSet.normalize`, which
    wraps the body once as `{Body, Properties, SystemProperties}`).

    A sample, parsed or not, that is already such an envelope (only those keys, `Body` among
    them) gives its parts as the transport would: its `Body` as the body and its `Properties` /
    `SystemProperties` as the message properties. So a JSON Lines file of MedTech's documented
    messages (`{"Body": ..., "Properties": {}, ...}`) is wrapped once, as in the pipeline."""
    body = message
    if isinstance(body, memoryview):
        body = body.tobytes()
    if isinstance(body, bytes | bytearray | str):
        try:
            body = loads(body)  # numbers as written (common.jsonnum), as the ingest handler reads them
        except (ValueError, UnicodeDecodeError):
            return devices.normalize(message, ingested_at=ingested_at)  # its own invalid_json error, as in the pipeline
    if isinstance(body, dict) and "Body" in body and body.keys() <= _ENVELOPE_KEYS:
        props, sys_props = body.get("Properties"), body.get("SystemProperties")
        return devices.normalize(body["Body"], properties=props if isinstance(props, dict) else None,
                                 system_properties=sys_props if isinstance(sys_props, dict) else None,
                                 ingested_at=ingested_at)
    return devices.normalize(body, ingested_at=ingested_at)


def _observations(measurements: list[Measurement], fhir: FhirTemplateSet, checks: dict[int, MessageCheck],
                  validate_fhir: bool) -> list[dict[str, Any]]:
    """The Observations of `measurements`, written in one pass as the handler writes a batch. A
    group that fails is mapped message by message, so only the culprit gets the error."""
    owner = {id(m): number for number, check in checks.items() for m in check.measurements}
    pending: dict[str, dict[str, Any]] = {}  # Observation id -> what this pass writes there
    order: list[str] = []

    def write(group: MeasurementGroup) -> None:
        for change in _changes(group, fhir, pending):
            if change.id not in pending:
                order.append(change.id)
            pending[change.id] = change.resource

    for group in group_measurements(measurements):
        try:
            write(group)
            continue
        except MappingFailure as failure:
            sources = sorted({owner[id(m)] for m in group.measurements})
            if len(sources) <= 1:
                for number in sources:
                    checks[number].errors.append(failure.to_error(type_name=group.type))
                continue
        for number in sources:
            for sub in group_measurements([m for m in group.measurements if owner[id(m)] == number]):
                try:
                    write(sub)
                except MappingFailure as failure:
                    checks[number].errors.append(failure.to_error(type_name=sub.type))
    resources = [pending[i] for i in order]
    if validate_fhir:
        for resource in resources:
            problem = _validate(resource)
            if problem:
                number = min(checks)  # a merged Observation has no single message: noted on the first
                checks[number].notes.append(f"Observation for {resource['code'].get('text')!r} is not valid R4: "
                                            f"{problem}")
    return resources


def _changes(
    group: MeasurementGroup, fhir: FhirTemplateSet, pending: dict[str, dict[str, Any]]
) -> list[ObservationChange]:
    patient = sha256_id(None, group.patient_id) if group.patient_id else sha256_id(None, f"device:{group.device_id}")
    encounter = sha256_id(None, group.encounter_id) if group.encounter_id else None
    return fhir.observations(group, patient_id=patient, device_id=sha256_id(None, group.device_id),
                             encounter_id=encounter, existing=pending.get)


def _validate(resource: dict[str, Any]) -> str | None:
    from fhir.resources.R4B.observation import Observation  # imported lazily: slow to import
    from pydantic import ValidationError

    try:
        Observation.model_validate(resource)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
    return None
