"""Device mapping templates (MedTech `devicecontent.json`): device message -> measurements.

Supported template types, as in microsoft/iomt-fhir (https://github.com/microsoft/iomt-fhir/tree/main/docs):

* `CollectionContent` — the root; a message is run through **every** child template and every
  match of each becomes one measurement.
* `CalculatedContent` — JSONPath (default) or JMESPath expressions, per expression or via
  `defaultExpressionLanguage`. After `typeMatchExpression` matches, the other expressions see the
  envelope plus `matchedToken`: `{Body, Properties, SystemProperties, matchedToken}`.
* `JsonPathContent` — legacy: every other expression is evaluated against the matched token.
* `IotJsonPathContent` — IoT Hub messages: device id from
  `SystemProperties.iothub-connection-device-id`, time from `Properties.iothub-creation-time-utc`
  (else `SystemProperties.iothub-enqueuedtime`), relative to the matched token.
* `IotCentralJsonPathContent` — IoT Central exports: `deviceId` and `enqueuedTime` of the match.

Vigil extensions (ignored by MedTech, so a template stays portable):

* value `unit` (a UCUM code or a common spelling) / `unitExpression` (read it from the message):
  the unit the device sends; the FHIR side converts to the Observation's unit.
* template `timestampZone` (an IANA zone name or "UTC") or `timestampZoneExpression` (read the
  zone name from the message, e.g. a user profile's time zone): how to read a timestamp that has
  no UTC offset. Without either such a timestamp is an error (`naive_timestamp`), never silently
  "server local" as in MedTech.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.jsonnum import loads
from ingest.templates.errors import (
    CORRELATION_ID_MISSING,
    EXPRESSION_ERROR,
    INCOMPATIBLE_VALUE,
    INVALID_JSON,
    MISSING_REQUIRED_VALUE,
    NAIVE_TIMESTAMP,
    NO_TEMPLATE_MATCHED,
    ErrorList,
    MappingFailure,
    MessageError,
    TemplateError,
    TemplateIssue,
)
from ingest.templates.expressions import (
    JMESPATH,
    JSONPATH,
    CompiledExpression,
    ExpressionCompileError,
    compile_expression,
    containers,
    message_cache,
    normalize_language,
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

_IOT_DEVICE_ID = "$.SystemProperties.iothub-connection-device-id"
_IOT_CREATION_TIME = "$.Properties.iothub-creation-time-utc"
_IOT_ENQUEUED_TIME = "$.SystemProperties.iothub-enqueuedtime"
_CENTRAL_DEVICE_ID = "$.deviceId"
_CENTRAL_TIME = "$.enqueuedTime"

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
        for spec in self.values:
            raw = scope.get_once(spec.expression)
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
        zone = _zone(scope.get(expr))
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


@dataclass
class NormalizeResult:
    """What one device message produced. A message that matched no template has no measurements
    and one `no_template_matched` error: never a silent empty list."""

    measurements: list[Measurement]
    errors: list[MessageError]
    matched_templates: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def reason(self) -> str | None:
        """The dead-letter reason of the first error, or None."""
        return self.errors[0].reason if self.errors else None

    @property
    def detail(self) -> str:
        return "; ".join(e.detail for e in self.errors)


@dataclass
class DeviceTemplateSet:
    """A loaded, compiled device template collection."""

    templates: list[DeviceTemplate]
    name: str = "<templates>"
    issues: list[TemplateIssue] = field(default_factory=list)  # only non-empty with strict=False

    def __post_init__(self) -> None:
        # Anchor members of `$..[?(@a && ...)]` matches, when several templates use that shape.
        anchors = [t.type_match.scan_anchor for t in self.templates if t.type_match.scan_anchor]
        self._anchors = frozenset(anchors) if len(anchors) > 1 else frozenset()

    def _member_index(self, envelope: Any) -> dict[str, list[dict]]:
        index: dict[str, list[dict]] = {}
        anchors = self._anchors
        for node in containers(envelope):
            if type(node) is dict:
                for key in anchors & node.keys():
                    index.setdefault(key, []).append(node)
        return index

    @property
    def type_names(self) -> set[str]:
        return {t.type_name for t in self.templates}

    def normalize(
        self,
        message: dict | list | bytes | str,
        *,
        properties: dict[str, Any] | None = None,
        system_properties: dict[str, Any] | None = None,
        ingested_at: datetime | None = None,
    ) -> NormalizeResult:
        """Run one device message (the event body) through every template.

        `properties`/`system_properties` are the transport's message properties (Event Hubs /
        IoT Hub); they become the envelope's `Properties`/`SystemProperties`.
        """
        if isinstance(message, memoryview):
            message = message.tobytes()
        if isinstance(message, bytes | bytearray | str):
            try:
                body = loads(message)  # numbers as written (common.jsonnum)
            except (ValueError, UnicodeDecodeError) as exc:
                return NormalizeResult(
                    [], [MessageError(INVALID_JSON, f"payload is not valid JSON ({exc.__class__.__name__})")]
                )
        else:
            body = message
        if not isinstance(body, dict | list):
            return NormalizeResult(
                [],
                [MessageError(INVALID_JSON, f"payload is a JSON {type(body).__name__}; expected an object or array")],
            )
        envelope = {"Body": body, "Properties": properties or {}, "SystemProperties": system_properties or {}}
        return self.normalize_envelope(envelope, ingested_at=ingested_at)

    def normalize_envelope(self, envelope: Any, *, ingested_at: datetime | None = None) -> NormalizeResult:
        """Like `normalize`, for a message already wrapped as `{Body, Properties, SystemProperties}`
        (or any root token, as MedTech's own unit tests pass them)."""
        if ingested_at is None:
            ingested_at = datetime.now(UTC)
        measurements: list[Measurement] = []
        errors: list[MessageError] = []
        matched = 0
        with message_cache():
            matched = self._run(envelope, ingested_at, measurements, errors)
        if not measurements and not errors:
            errors.append(
                MessageError(
                    NO_TEMPLATE_MATCHED,
                    f"no typeMatchExpression of the {len(self.templates)} template(s) in {self.name} "
                    "matched the message",
                )
            )
        return NormalizeResult(measurements, errors, matched)

    def _run(self, envelope: Any, ingested_at: datetime, measurements: list[Measurement],
             errors: list[MessageError]) -> int:
        matched = 0
        memo: dict = {}
        index = self._member_index(envelope) if self._anchors else None
        grouped: dict = {}  # X[?key == 'literal'] signature -> the message's elements grouped by key
        for template in self.templates:
            type_match = template.type_match
            anchor = type_match.scan_anchor
            try:
                if type_match.group is not None:
                    signature, literals, _ = type_match.group
                    try:
                        groups = grouped[signature]
                    except KeyError:
                        groups = grouped[signature] = type_match.groups(envelope)
                    if groups is None or literals.isdisjoint(groups):
                        continue
                if index is not None and anchor is not None:
                    # Same result as the expression: the objects passing the filter, in order.
                    candidates = index.get(anchor)
                    if not candidates:
                        continue
                    test = type_match.scan_test
                    tokens = [n for n in candidates if test(n, envelope)]
                else:
                    tokens = type_match.find(envelope)
            except MappingFailure as failure:
                failure.where.setdefault("field", "typeMatchExpression")
                errors.append(_with_template(failure, template))
                continue
            except Exception as exc:  # a filter comparison the data does not support
                failure = MappingFailure(EXPRESSION_ERROR, f"typeMatchExpression {type_match.text!r} failed "
                                         f"({type(exc).__name__})", field="typeMatchExpression",
                                         expression=type_match.text)
                errors.append(_with_template(failure, template))
                continue
            if not tokens:
                continue
            matched += 1
            for token in tokens:
                try:
                    measurements.append(template.extract(envelope, token, ingested_at, memo))
                except MappingFailure as failure:
                    errors.append(_with_template(failure, template))
        return matched


def _with_template(failure: MappingFailure, template: DeviceTemplate) -> MessageError:
    detail = f"template[{template.index}] ({template.type_name}): {failure.detail}"
    return MessageError(
        reason=failure.reason,
        detail=detail,
        template_index=template.index,
        type_name=template.type_name,
        field=failure.where.get("field"),
        expression=failure.where.get("expression"),
    )


# ------------------------------------------------------------------------------------------------
# Loading


def read_template_source(source: str | Path | dict | list, name: str | None) -> tuple[Any, str]:
    """Accept a path, JSON text, or an already-parsed document. Returns (document, display name).
    Raises TemplateError for unreadable files or invalid JSON."""
    if isinstance(source, dict | list):
        return source, name or "<template>"
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
        path = Path(source)
        display = name or str(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # MedTech files often carry a BOM
        except OSError as exc:
            raise TemplateError(
                [TemplateIssue(display, None, "", f"cannot read file: {exc.strerror or exc}")]
            ) from None
    else:
        text = source
        display = name or "<template>"
    try:
        return json.loads(text), display
    except ValueError as exc:
        raise TemplateError([TemplateIssue(display, None, "", f"not valid JSON: {exc}")]) from None


def load_device_templates(
    source: str | Path | dict | list, *, name: str | None = None, strict: bool = True
) -> DeviceTemplateSet:
    """Load and compile a device template file (a `CollectionContent`, or one bare template).

    Every problem is collected and raised together as a `TemplateError` naming the file, the
    template index and the field. With `strict=False` the valid templates are kept and the
    problems are available as `result.issues` (MedTech's behaviour with a mixed file); Vigil's
    runtime always loads strictly.
    """
    document, display = read_template_source(source, name)
    errors = ErrorList(display)
    templates: list[DeviceTemplate] = []
    entries = collection_entries(document, errors, collection=COLLECTION, single=frozenset(TEMPLATE_TYPES),
                                 other_file_hint=lambda kind: kind in ("collectionfhir", "codevaluefhir"),
                                 other_file="FHIR mapping")
    for index, entry in entries:
        template = _load_one(index, entry, errors)
        if template is not None:
            templates.append(template)
    if strict:
        errors.raise_if_any()
    return DeviceTemplateSet(templates, display, list(errors.issues))


def collection_entries(document: Any, errors: ErrorList, *, collection: str, single: frozenset[str],
                       other_file_hint: Callable[[str], bool], other_file: str) -> list[tuple[int, Any]]:
    """The (index, template) entries of a template file's root: a `collection` with a `template`
    array, or one bare template whose type (lower-cased) is in `single`. Shared by the device and
    FHIR mapping loaders; `other_file_hint(kind)` spots the other kind of mapping file."""
    if not isinstance(document, dict):
        errors.add(None, "", "the root must be a JSON object with templateType and template")
        return []
    root_type = document.get("templateType")
    if not isinstance(root_type, str) or not root_type.strip():
        errors.add(None, "templateType", f"templateType is required (expected {collection!r})")
        return []
    kind = root_type.strip().lower()
    if kind in single:  # one bare template: treat as a collection of one
        return [(0, document)]
    if kind != collection.lower():
        hint = f" (this looks like a {other_file} file)" if other_file_hint(kind) else ""
        errors.add(None, "templateType", f"expected {collection!r}, got {root_type!r}{hint}")
        return []
    children = document.get("template")
    if not isinstance(children, list):
        errors.add(None, "template", f"expected an array of templates for {collection}")
        return []
    return list(enumerate(children))


def _load_one(index: int, entry: Any, errors: ErrorList) -> DeviceTemplate | None:
    if not isinstance(entry, dict):
        errors.add(index, "", "each template must be an object with templateType and template")
        return None
    raw_type = entry.get("templateType")
    ttype = TEMPLATE_TYPES.get(raw_type.strip().lower()) if isinstance(raw_type, str) else None
    body = entry.get("template")
    type_name = body.get("typeName") if isinstance(body, dict) else None
    type_name = type_name if isinstance(type_name, str) else None
    if ttype is None:
        errors.add(index, "templateType", f"unknown device template type {raw_type!r}; expected one of "
                   f"{', '.join(sorted(TEMPLATE_TYPES.values()))}", type_name)
        return None
    if not isinstance(body, dict):
        errors.add(index, "template", f"{ttype} needs a template object", type_name)
        return None

    before = len(errors.issues)

    def issue(field_: str, message: str) -> None:
        errors.add(index, field_, message, type_name)

    if not type_name or not type_name.strip():
        issue("typeName", "required field 'typeName' is missing or blank")

    default_language = JSONPATH
    if ttype == CALCULATED and body.get("defaultExpressionLanguage") is not None:
        default_language = normalize_language(body.get("defaultExpressionLanguage")) or ""
        if not default_language:
            issue("defaultExpressionLanguage", f"unknown language {body.get('defaultExpressionLanguage')!r} "
                  "(use JsonPath or JmesPath)")
            default_language = JSONPATH

    def expr(field_: str, required: bool) -> CompiledExpression | None:
        spec = body.get(field_)
        if spec is None:
            if required:
                issue(field_, f"required field {field_!r} is missing")
            return None
        try:
            compiled = compile_expression(spec, default_language)
        except ExpressionCompileError as exc:
            issue(field_, str(exc))
            return None
        if ttype != CALCULATED and compiled.language == JMESPATH:
            issue(field_, f"JmesPath expressions are only available in {CALCULATED} templates")
            return None
        return compiled

    type_match = expr("typeMatchExpression", True)
    fixed = ttype in (IOT_JSON_PATH, IOT_CENTRAL)
    if ttype == IOT_JSON_PATH:
        device_id = compile_expression(_IOT_DEVICE_ID)
        timestamps = (compile_expression(_IOT_CREATION_TIME), compile_expression(_IOT_ENQUEUED_TIME))
    elif ttype == IOT_CENTRAL:
        device_id = compile_expression(_CENTRAL_DEVICE_ID)
        timestamps = (compile_expression(_CENTRAL_TIME),)
    else:
        device_id = expr("deviceIdExpression", True)
        timestamp = expr("timestampExpression", True)
        timestamps = (timestamp,) if timestamp is not None else ()
    patient_id = expr("patientIdExpression", False)
    encounter_id = expr("encounterIdExpression", False)
    correlation_id = expr("correlationIdExpression", False)

    zone_expression = expr("timestampZoneExpression", False)
    zone: tzinfo | None = None
    raw_zone = body.get("timestampZone")
    if raw_zone is not None:
        zone = _zone(raw_zone)
        if zone is None:
            issue(
                "timestampZone", f"unknown time zone {raw_zone!r} (use an IANA name such as 'Europe/Paris', or 'UTC')"
            )

    values: list[ValueSpec] = []
    raw_values = body.get("values", [])
    if raw_values is None:
        raw_values = []
    if not isinstance(raw_values, list):
        issue("values", "values must be an array")
        raw_values = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_values):
        spec = _load_value(i, raw, default_language, ttype, issue)
        if spec is None:
            continue
        if spec.name in seen:
            issue(f"values[{i}].valueName", f"duplicate valueName {spec.name!r}")
            continue
        seen.add(spec.name)
        values.append(spec)

    if len(errors.issues) > before or type_match is None or (not fixed and (device_id is None or not timestamps)):
        return None
    unknown = tuple(sorted(k for k in body if k not in KNOWN_FIELDS)) + tuple(
        f"values[{i}].{k}" for i, raw in enumerate(raw_values) if isinstance(raw, dict)
        for k in sorted(raw) if k not in KNOWN_VALUE_FIELDS)
    return DeviceTemplate(
        index=index,
        template_type=ttype,
        type_name=type_name.strip() if type_name else "",
        type_match=type_match,
        device_id=device_id,
        timestamps=timestamps,
        values=tuple(values),
        patient_id=patient_id,
        encounter_id=encounter_id,
        correlation_id=correlation_id,
        timestamp_zone=zone,
        timestamp_zone_expression=zone_expression,
        relative=ttype != CALCULATED,
        unknown_fields=unknown,
        source=entry,
    )


def _load_value(i: int, raw: Any, default_language: str, ttype: str, issue: Any) -> ValueSpec | None:
    where = f"values[{i}]"
    if not isinstance(raw, dict):
        issue(where, "each value must be an object with valueName and valueExpression")
        return None
    name = raw.get("valueName")
    ok = True
    if not isinstance(name, str) or not name.strip():
        issue(f"{where}.valueName", "required field 'valueName' is missing or blank")
        ok = False
    if raw.get("valueExpression") is None:
        issue(f"{where}.valueExpression", "required field 'valueExpression' is missing")
        return None
    try:
        expression = compile_expression(raw["valueExpression"], default_language)
    except ExpressionCompileError as exc:
        issue(f"{where}.valueExpression", str(exc))
        return None
    if ttype != CALCULATED and expression.language == JMESPATH:
        issue(f"{where}.valueExpression", f"JmesPath expressions are only available in {CALCULATED} templates")
        return None
    required = _bool(raw.get("required", False))
    if required is None:
        issue(f"{where}.required", f"required must be true or false, got {raw.get('required')!r}")
        ok = False
    unit = None
    if raw.get("unit") is not None:
        try:
            unit = to_ucum(raw["unit"])
        except MappingFailure as failure:
            issue(f"{where}.unit", failure.detail)
            ok = False
    unit_expression = None
    if raw.get("unitExpression") is not None:
        try:
            unit_expression = compile_expression(raw["unitExpression"], default_language)
        except ExpressionCompileError as exc:
            issue(f"{where}.unitExpression", str(exc))
            ok = False
    if not ok:
        return None
    return ValueSpec(name.strip(), expression, bool(required), unit, unit_expression)


def _bool(value: Any) -> bool | None:
    """MedTech samples write `"required": "true"` as often as `true`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _zone(value: Any) -> tzinfo | None:
    if not isinstance(value, str) or not value.strip():
        return None
    if value.strip().upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None
