"""The normalized measurement: what device templates produce and FHIR templates consume.

It mirrors MedTech's `IMeasurement` (values are strings, as there) and adds one optional field per
property: the unit the device sent the value in, when the device template declares it. Vigil uses
that to convert to the canonical UCUM unit of the Observation code (`ingest.templates.units`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.jsonnum import WrittenNumber
from ingest.templates.instant import parse_iso


# Plain (not frozen) slotted dataclasses: they are built per reading on the hot path, where a frozen
# dataclass's __init__ costs three times as much. Treat them as immutable all the same.
@dataclass(slots=True)
class MeasurementProperty:
    name: str
    value: str
    unit: str | None = None  # UCUM code the device sent `value` in (Vigil extension)


@dataclass(slots=True)
class Measurement:
    type: str
    occurrence_time: datetime  # timezone-aware, UTC; an Instant when it has ticks beyond the microsecond
    device_id: str
    properties: tuple[MeasurementProperty, ...]
    patient_id: str | None = None
    encounter_id: str | None = None
    correlation_id: str | None = None
    ingestion_time: datetime | None = None  # when Vigil accepted the message; orders duplicates
    template_index: int | None = None  # which device template produced it (for diagnostics)

    def value(self, name: str) -> str | None:
        for prop in self.properties:
            if prop.name == name:
                return prop.value
        return None

    def to_dict(self) -> dict[str, Any]:
        """MedTech's JSON shape (`Type`, `OccurrenceTimeUtc`, ... `Properties[{Name, Value}]`), plus
        `Unit` on a property when the template declared one. Round-trips with `from_dict`."""
        props = []
        for p in self.properties:
            entry: dict[str, Any] = {"Name": p.name, "Value": p.value}
            if p.unit is not None:
                entry["Unit"] = p.unit
            props.append(entry)
        return {
            "Type": self.type,
            "OccurrenceTimeUtc": _iso(self.occurrence_time),
            "IngestionTimeUtc": _iso(self.ingestion_time) if self.ingestion_time else None,
            "DeviceId": self.device_id,
            "PatientId": self.patient_id,
            "EncounterId": self.encounter_id,
            "CorrelationId": self.correlation_id,
            "Properties": props,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        def when(text: str | None) -> datetime | None:
            if text is None:
                return None
            value = parse_iso(text.replace("Z", "+00:00"))
            if value.tzinfo is None:
                raise ValueError("measurement times must carry a UTC offset")
            return value.astimezone(UTC)

        occurrence = when(data["OccurrenceTimeUtc"])
        assert occurrence is not None
        return cls(
            type=data["Type"],
            occurrence_time=occurrence,
            ingestion_time=when(data.get("IngestionTimeUtc")),
            device_id=data["DeviceId"],
            patient_id=data.get("PatientId"),
            encounter_id=data.get("EncounterId"),
            correlation_id=data.get("CorrelationId"),
            properties=tuple(
                MeasurementProperty(p["Name"], p["Value"], p.get("Unit")) for p in data.get("Properties", [])
            ),
        )


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def value_text(value: Any) -> str:
    """The string form of a JSON value.

    A number read with its fraction (common.jsonnum.WrittenNumber) keeps it as written: `72.40`
    stays "72.40" (FHIR decimals keep their precision). A computed float, or a number written with
    an exponent, reads as MedTech's `JToken.ToString()` gives it: integral floats lose their `.0`
    (5.0 -> "5", 1e3 -> "1000"). Booleans are "True"/"False"; objects and arrays become compact
    JSON."""
    kind = type(value)  # exact-type fast paths for what JSON gives; subclasses take the checks below
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is WrittenNumber and not value.has_exponent:
        return value.text
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        return _iso(value) if value.tzinfo else value.isoformat()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
