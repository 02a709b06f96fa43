"""Loading device template files (MedTech `devicecontent.json`): every problem collected with the
file, template index and field; expressions compiled once, here (`ingest.templates.device` describes
the template types)."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import Any

from ingest.templates.compiled_expression import (
    JMESPATH,
    JSONPATH,
    CompiledExpression,
    ExpressionCompileError,
    normalize_language,
)
from ingest.templates.device import DeviceTemplateSet
from ingest.templates.device_template import (
    CALCULATED,
    COLLECTION,
    IOT_CENTRAL,
    IOT_JSON_PATH,
    KNOWN_FIELDS,
    KNOWN_VALUE_FIELDS,
    TEMPLATE_TYPES,
    DeviceTemplate,
    ValueSpec,
    zone_named,
)
from ingest.templates.errors import ErrorList, MappingFailure
from ingest.templates.expressions import compile_expression
from ingest.templates.template_source import collection_entries, read_template_source
from ingest.templates.units import to_ucum

_IOT_DEVICE_ID = "$.SystemProperties.iothub-connection-device-id"
_IOT_CREATION_TIME = "$.Properties.iothub-creation-time-utc"
_IOT_ENQUEUED_TIME = "$.SystemProperties.iothub-enqueuedtime"
_CENTRAL_DEVICE_ID = "$.deviceId"
_CENTRAL_TIME = "$.enqueuedTime"


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
    device_id: CompiledExpression | None
    timestamps: tuple[CompiledExpression, ...]
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
        zone = zone_named(raw_zone)
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
    if not ok or not isinstance(name, str):  # a name that is not text already failed `ok`
        return None
    return ValueSpec(name.strip(), expression, bool(required), unit, unit_expression)


def _bool(value: Any) -> bool | None:
    """MedTech samples write `"required": "true"` as often as `true`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None
