"""Grouping measurements the way MedTech does before it writes Observations.

1. `group_measurements`: by device, type, patient, encounter and correlation id (MedTech's key
   `DeviceId-Type-PatientId-EncounterId-CorrelationId`). Inside a group, measurements with the same
   occurrence time keep only the one ingested last (iomt-fhir PR #262: a correction sent with the
   original timestamp replaces the reading instead of being dropped).
2. `observation_groups`: each measurement group is split by the FHIR template's `periodInterval`:
   0 = one Observation per occurrence time, 60 = per UTC hour, 1440 = per UTC day, -1 = per
   correlation id (period = earliest..latest reading). Each observation group becomes one
   Observation, identified by `{patient}.{device}.{type}.{id segment}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ingest.templates.errors import CORRELATION_ID_MISSING, MappingFailure
from ingest.templates.instant import TICKS_PER_MICROSECOND, Instant
from ingest.templates.measurement import Measurement

SINGLE = 0
HOURLY = 60
DAILY = 1440
CORRELATION = -1
PERIOD_INTERVALS = {SINGLE: "Single", HOURLY: "Hourly", DAILY: "Daily", CORRELATION: "CorrelationId"}

_LAST_MICROSECOND = timedelta(microseconds=1)


@dataclass
class MeasurementGroup:
    """Measurements of one device, type, patient, encounter and correlation id."""

    device_id: str
    type: str
    patient_id: str | None
    encounter_id: str | None
    correlation_id: str | None
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str | None, str | None, str | None]:
        return (self.device_id, self.type, self.patient_id, self.encounter_id, self.correlation_id)

    @property
    def latest_ingestion(self) -> datetime | None:
        times = [m.ingestion_time for m in self.measurements if m.ingestion_time is not None]
        return max(times) if times else None


@dataclass
class TimedValue:
    time: datetime
    value: str
    unit: str | None
    ingestion_time: datetime | None


@dataclass
class ObservationGroup:
    """The readings that become one Observation."""

    name: str  # the measurement type (MedTech uses it as code.text and in the identifier)
    start: datetime
    end: datetime
    id_segment: str
    values: dict[str, list[TimedValue]] = field(default_factory=dict)  # per property, by time
    source: MeasurementGroup | None = field(default=None, repr=False)

    @property
    def latest_ingestion(self) -> datetime | None:
        times = [v.ingestion_time for vs in self.values.values() for v in vs if v.ingestion_time is not None]
        return max(times) if times else None

    def add(self, measurement: Measurement) -> None:
        for prop in measurement.properties:
            series = self.values.setdefault(prop.name, [])
            # MedTech keeps one value per (property, time); grouping already removed duplicates.
            if any(v.time == measurement.occurrence_time for v in series):
                continue
            series.append(TimedValue(measurement.occurrence_time, prop.value, prop.unit, measurement.ingestion_time))
            series.sort(key=lambda v: v.time)


def group_measurements(measurements: list[Measurement]) -> list[MeasurementGroup]:
    """Group measurements (see the module docstring). Order: first appearance of each key;
    inside a group, by occurrence time."""
    groups: dict[tuple, MeasurementGroup] = {}
    for m in measurements:
        key = (m.device_id, m.type, m.patient_id, m.encounter_id, m.correlation_id)
        group = groups.get(key)
        if group is None:
            group = groups[key] = MeasurementGroup(*key)
        group.measurements.append(m)
    for group in groups.values():
        group.measurements = _latest_per_time(group.measurements)
    return list(groups.values())


def _latest_per_time(measurements: list[Measurement]) -> list[Measurement]:
    chosen: dict[datetime, tuple[int, Measurement]] = {}
    floor = datetime.min.replace(tzinfo=UTC)
    for position, m in enumerate(measurements):
        current = chosen.get(m.occurrence_time)
        if current is None or (m.ingestion_time or floor, position) >= (current[1].ingestion_time or floor, current[0]):
            chosen[m.occurrence_time] = (position, m)
    return [m for _, m in sorted(chosen.values(), key=lambda pm: (pm[1].occurrence_time, pm[0]))]


def window(time: datetime, interval: int) -> tuple[datetime, datetime]:
    """The UTC window a reading falls in for a time-based periodInterval."""
    time = time.astimezone(UTC)
    if interval == SINGLE:
        return time, time
    if interval == HOURLY:
        start = time.replace(minute=0, second=0, microsecond=0)
        return start, _one_tick_before(start + timedelta(hours=1))
    if interval == DAILY:
        start = time.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, _one_tick_before(start + timedelta(days=1))
    raise ValueError(f"periodInterval {interval} is not a time window")


def _one_tick_before(boundary: datetime) -> Instant:
    """MedTech ends a window one .NET tick (100 ns) before the next: `...59.9999999`."""
    return Instant.of(boundary - _LAST_MICROSECOND, extra_ticks=TICKS_PER_MICROSECOND - 1)


def id_segment(start: datetime, end: datetime) -> str:
    """MedTech's `yyyyMMddHHmmssZ.yyyyMMddHHmmssZ` (seconds precision, UTC)."""
    return f"{_compact(start)}Z.{_compact(end)}Z"


def _compact(value: datetime) -> str:
    v = value.astimezone(UTC)
    return f"{v.year:04d}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}{v.second:02d}"


def observation_groups(group: MeasurementGroup, interval: int) -> list[ObservationGroup]:
    """Split a measurement group into observation groups for a FHIR template's periodInterval."""
    if interval == CORRELATION:
        if not group.correlation_id:
            raise MappingFailure(
                CORRELATION_ID_MISSING,
                f"FHIR template for {group.type!r} groups by correlation id (periodInterval -1) but the "
                "measurements have none; set correlationIdExpression in the device template",
            )
        times = [m.occurrence_time for m in group.measurements]
        obs = ObservationGroup(group.type, min(times), max(times), group.correlation_id, source=group)
        for m in group.measurements:
            obs.add(m)
        return [obs]
    by_start: dict[datetime, ObservationGroup] = {}
    for m in group.measurements:
        start, end = window(m.occurrence_time, interval)
        window_group = by_start.get(start)
        if window_group is None:
            window_group = by_start[start] = ObservationGroup(group.type, start, end, id_segment(start, end),
                                                              source=group)
        window_group.add(m)
    return list(by_start.values())
