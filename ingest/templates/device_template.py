"""One compiled device template (`DeviceTemplate`) and how it turns one matched token into a
measurement: header expressions (device, time, patient, encounter, correlation id) memoized per
message, values with their units, and ISO 8601 timestamps read to MedTech's 100 ns. The template
types are described in `ingest.templates.device`; `ingest.templates.device_loader` compiles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.templates.compiled_expression import CompiledExpression
from ingest.templates.errors import (
    CORRELATION_ID_MISSING,
    INCOMPATIBLE_VALUE,
    MISSING_REQUIRED_VALUE,
    NAIVE_TIMESTAMP,
    MappingFailure,
)
from ingest.templates.instant import parse_iso
from ingest.templates.measurement import Measurement, MeasurementProperty, value_text
from ingest.templates.units import to_ucum

COLLECTION = "CollectionContent"
CALCULATED = "CalculatedContent"
JSON_PATH = "JsonPathContent"
IOT_JSON_PATH = "IotJsonPathContent"
IOT_CENTRAL = "IotCentralJsonPathContent"
TEMPLATE_TYPES = {t.lower(): t for t in (CALCULATED, JSON_PATH, IOT_JSON_PATH, IOT_CENTRAL)}

KNOWN_FIELDS = {
    "typeName", "typeMatchExpression", "deviceIdExpression", "timestampExpression",
    "patientIdExpression", "encounterIdExpression", "correlationIdExpression", "values",
    "defaultExpressionLanguage", "timestampZone", "timestampZoneExpression",
}
KNOWN_VALUE_FIELDS = {"valueName", "valueExpression", "required", "unit", "unitExpression"}


@dataclass(frozen=True)
class ValueSpec:
    name: str
    expression: CompiledExpression
    required: bool
    unit: str | None = None  # UCUM code declared by the template
    unit_expression: CompiledExpression | None = None


@dataclass
class DeviceTemplate:
    """One compiled device template. `index` is its position in the collection."""

    index: int
    template_type: str
    type_name: str
    type_match: CompiledExpression
    device_id: CompiledExpression | None
    timestamps: tuple[CompiledExpression, ...]  # first one that yields a value wins (IoT fallback)
    values: tuple[ValueSpec, ...]
    patient_id: CompiledExpression | None = None
    encounter_id: CompiledExpression | None = None
    correlation_id: CompiledExpression | None = None
    timestamp_zone: tzinfo | None = None
    timestamp_zone_expression: CompiledExpression | None = None
    relative: bool = False  # legacy types: expressions run against the matched token
    unknown_fields: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # What decides the measurement's ids and time. Templates with the same header expressions
        # evaluated on the same token (IoT Hub's six templates on one telemetry message, a blood
        # pressure and its pulse) share one evaluation per message; see `_header`.
        exprs = (self.device_id, *self.timestamps, self.timestamp_zone_expression, self.correlation_id,
                 self.patient_id, self.encounter_id)
        self._header_key = (self.relative, self.timestamp_zone,
                            *((e.language, e.text) if e is not None else None for e in exprs))
        self._header_per_token = self.relative or not all(e is None or e.envelope_only for e in exprs)

    def extract(self, envelope: Any, token: Any, ingested_at: datetime | None,
                memo: dict | None = None) -> Measurement:
        scope = _Scope(envelope, token, self.relative, {} if memo is None else memo)
        device_id, occurrence, correlation_id, patient_id, encounter_id = self._header(scope)

        props: list[MeasurementProperty] = []
        relative = self.relative
        for spec in self.values:
            # `scope.get_once`, inlined: this runs for every value of every reading.
            expression = spec.expression
            if relative:
                raw = expression.value(token)
            elif expression.envelope_only:
                raw = expression.value(envelope)
            else:
                raw = expression.value(scope.merged())
            if raw is None or (type(raw) is str and not raw.strip()):
                if spec.required:
                    raise MappingFailure(
                        MISSING_REQUIRED_VALUE,
                        f"required value {spec.name!r} ({spec.expression.text}) is missing, null or blank",
                        field=f"values[{spec.name}]", expression=spec.expression.text,
                    )
                continue
            unit = spec.unit
            if spec.unit_expression is not None:
                raw_unit = scope.get_once(spec.unit_expression)
                if raw_unit is not None and not (isinstance(raw_unit, str) and not raw_unit.strip()):
                    try:
                        unit = to_ucum(raw_unit)
                    except MappingFailure as failure:
                        failure.where.update(field=f"values[{spec.name}].unitExpression",
                                             expression=spec.unit_expression.text)
                        raise
            props.append(MeasurementProperty(spec.name, value_text(raw), unit))

        # Positional: this runs once per reading (type, time, device, properties, patient,
        # encounter, correlation, ingestion time, template index).
        return Measurement(self.type_name, occurrence, device_id, tuple(props), patient_id, encounter_id,
                           correlation_id, ingested_at, self.index)

    def _header(self, scope: _Scope) -> tuple[str, datetime, str | None, str | None, str | None]:
        memo = scope.memo
        token = scope.token
        key = (self._header_key, id(token)) if self._header_per_token else self._header_key
        entry = memo.get(key)
        # The entry keeps its token: a token a JMESPath match built (a projection's list) can be
        # freed and its id reused by another template's token, which must not get this header.
        # Holding it also keeps it alive for the rest of the message.
        if entry is not None and (entry[0] is token or not self._header_per_token):
            return entry[1]
        header = self._read_header(scope)  # a failure is not memoized: each template reports its own
        memo[key] = (token, header)
        return header

    def _read_header(self, scope: _Scope) -> tuple[str, datetime, str | None, str | None, str | None]:
        device_id = self._required_text(self.device_id, scope, "deviceIdExpression")
        occurrence = self._timestamp(scope)
        correlation_id = None
        if self.correlation_id is not None:
            correlation_id = _text_or_none(scope.get(self.correlation_id))
            if correlation_id is None:
                raise MappingFailure(
                    CORRELATION_ID_MISSING,
                    f"required value for correlationIdExpression ({self.correlation_id.text}) is missing",
                    field="correlationIdExpression", expression=self.correlation_id.text,
                )
        patient_id = _text_or_none(scope.get(self.patient_id)) if self.patient_id else None
        encounter_id = _text_or_none(scope.get(self.encounter_id)) if self.encounter_id else None
        return device_id, occurrence, correlation_id, patient_id, encounter_id

    def _required_text(self, expr: CompiledExpression | None, scope: _Scope, field_name: str) -> str:
        text = _text_or_none(scope.get(expr)) if expr is not None else None
        if text is None:
            shown = expr.text if expr is not None else "(none)"
            raise MappingFailure(
                MISSING_REQUIRED_VALUE,
                f"required value for {field_name} ({shown}) is missing, null or blank",
                field=field_name, expression=shown,
            )
        return text

    def _timestamp(self, scope: _Scope) -> datetime:
        raw = None
        used = self.timestamps[0]
        for expr in self.timestamps:
            raw = scope.get(expr)
            used = expr
            if raw is not None and not (isinstance(raw, str) and not raw.strip()):
                break
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise MappingFailure(
                MISSING_REQUIRED_VALUE,
                f"required value for timestampExpression ({' or '.join(e.text for e in self.timestamps)})"
                " is missing, null or blank",
                field="timestampExpression", expression=used.text,
            )
        memo = scope.memo
        key = ("timestamp", raw, self.timestamp_zone) if type(raw) is str else None
        if key is not None and key in memo:
            return memo[key]
        try:
            parsed = parse_timestamp(raw, self.timestamp_zone)
            if key is not None:
                memo[key] = parsed
            return parsed
        except MappingFailure as failure:
            if failure.reason == NAIVE_TIMESTAMP and self.timestamp_zone_expression is not None:
                return parse_timestamp(raw, self._zone_from_message(scope))
            failure.where.update(field="timestampExpression", expression=used.text)
            raise

    def _zone_from_message(self, scope: _Scope) -> tzinfo:
        expr = self.timestamp_zone_expression
        assert expr is not None
        zone = zone_named(scope.get(expr))
        if zone is None:
            raise MappingFailure(
                NAIVE_TIMESTAMP,
                f"timestamp has no UTC offset and timestampZoneExpression ({expr.text}) gives no known time zone",
                field="timestampZoneExpression", expression=expr.text,
            )
        return zone


class _Scope:
    """What one match's expressions are evaluated against.

    CalculatedContent expressions see the envelope plus `matchedToken`; legacy types see the
    matched token. Values are memoized per message: an expression that cannot reach
    `matchedToken` (e.g. `$.Body.deviceId`), or a legacy expression on the same token, gives the
    same value for every template and match, so it is evaluated once.
    """

    __slots__ = ("envelope", "token", "relative", "memo", "_merged")

    def __init__(self, envelope: Any, token: Any, relative: bool, memo: dict):
        self.envelope = envelope
        self.token = token
        self.relative = relative
        self.memo = memo
        self._merged: Any = None

    def get(self, expr: CompiledExpression) -> Any:
        key: tuple[Any, ...]
        if self.relative:
            key = (expr.text, id(self.token))
            target = self.token
        elif expr.envelope_only:
            key = (expr.language, expr.text)
            target = self.envelope
        else:
            return expr.value(self.merged())
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = expr.value(target)
            return value

    def get_once(self, expr: CompiledExpression) -> Any:
        """Like `get`, without the memo: for value expressions, which each template evaluates once
        per match, so remembering them would cost more than it saves."""
        if self.relative:
            return expr.value(self.token)
        if expr.envelope_only:
            return expr.value(self.envelope)
        return expr.value(self.merged())

    def merged(self) -> Any:
        if self._merged is None:
            if type(self.envelope) is dict:
                merged = dict(self.envelope)
                merged["matchedToken"] = self.token
            else:
                merged = {"matchedToken": self.token}
            self._merged = merged
        return self._merged


def _text_or_none(raw: Any) -> str | None:
    if raw is None:
        return None
    text = value_text(raw)
    return text if text.strip() else None


def parse_timestamp(raw: Any, zone: tzinfo | None = None) -> datetime:
    """An ISO 8601 timestamp -> aware UTC datetime, to the 100 ns MedTech keeps (an `Instant` when
    the text has digits beyond the microsecond). Offset-less values need `zone`."""
    if isinstance(raw, str):  # the common case first
        text = raw.strip()
        try:
            value = parse_iso(text)
        except ValueError:
            raise MappingFailure(
                INCOMPATIBLE_VALUE, "timestamp is not an ISO 8601 date-time"
            ) from None
    elif isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        raise MappingFailure(
            INCOMPATIBLE_VALUE,
            "timestamp is a number; convert epoch times with fromUnixTimestamp()/fromUnixTimestampMs()"
            " in a JmesPath expression",
        )
    else:
        raise MappingFailure(INCOMPATIBLE_VALUE, f"timestamp is a JSON {type(raw).__name__}, not a string")
    if value.tzinfo is None:
        if zone is None:
            raise MappingFailure(
                NAIVE_TIMESTAMP,
                "timestamp has no UTC offset; add one at the source or set \"timestampZone\" in the template",
            )
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def zone_named(value: Any) -> tzinfo | None:
    """The time zone an IANA name (or UTC / Z) names; None for anything else."""
    if not isinstance(value, str) or not value.strip():
        return None
    if value.strip().upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None
