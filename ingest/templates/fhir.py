"""FHIR mapping templates (MedTech `fhirmapping.json`): measurement groups -> Observations.

`CollectionFhir` holds `CodeValueFhir` templates, one per measurement `typeName` (matched
case-insensitively). A template gives the Observation codes, optional categories, the grouping
window (`periodInterval` 0 / 60 / 1440 / -1) and either a `value` or `components`, each with a
value type: `SampledData` (`defaultPeriod` ms, `unit`), `Quantity` (`unit`, `code`, `system`),
`String`, or `CodeableConcept` (`text`, `codes`; the presence of the reading is the value).

See https://github.com/microsoft/iomt-fhir/tree/main/docs and `ingest.templates.observation` for how Observations
are built and merged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.templates.errors import TEMPLATE_NOT_FOUND, ErrorList, MappingFailure, TemplateIssue
from ingest.templates.fhir_model import (
    CategoryConcept,
    CodeValueTemplate,
    ComponentTemplate,
    FhirCode,
    ObservationChange,
    ValueTemplate,
)
from ingest.templates.grouping import (
    PERIOD_INTERVALS,
    MeasurementGroup,
    ObservationGroup,
    observation_groups,
)
from ingest.templates.observation import build_change, observation_identity
from ingest.templates.template_source import collection_entries, read_template_source

COLLECTION = "CollectionFhir"
CODE_VALUE = "CodeValueFhir"
SAMPLED_DATA = "SampledData"
QUANTITY = "Quantity"
STRING = "String"
CODEABLE_CONCEPT = "CodeableConcept"
VALUE_TYPES = {t.lower(): t for t in (SAMPLED_DATA, QUANTITY, STRING, CODEABLE_CONCEPT)}
_INTERVAL_NAMES = {name.lower(): value for value, name in PERIOD_INTERVALS.items()}
KNOWN_FIELDS = {"typeName", "periodInterval", "codes", "category", "value", "components"}


@dataclass
class FhirTemplateSet:
    templates: list[CodeValueTemplate]
    name: str = "<templates>"
    issues: list[TemplateIssue] = field(default_factory=list)  # only non-empty with strict=False

    def __post_init__(self) -> None:
        self._by_type = {t.type_name.lower(): t for t in self.templates}

    def template_for(self, type_name: str) -> CodeValueTemplate:
        template = self._by_type.get(type_name.lower())
        if template is None:
            raise MappingFailure(
                TEMPLATE_NOT_FOUND,
                f"no FHIR template in {self.name} has typeName {type_name!r}",
                type_name=type_name,
            )
        return template

    def has_template(self, type_name: str) -> bool:
        return type_name.lower() in self._by_type

    def observation_groups(self, group: MeasurementGroup) -> list[ObservationGroup]:
        """Split a measurement group into the observation groups its template's periodInterval
        asks for. Raises MappingFailure (template_not_found, correlation_id_missing)."""
        return observation_groups(group, self.template_for(group.type).period_interval)

    def observation_key(self, obs_group: ObservationGroup, *, patient_id: str, device_id: str) -> tuple[str, str, str]:
        """(identifier system, identifier value, resource id) — so the caller can read `existing`."""
        return observation_identity(obs_group, patient_id=patient_id, device_id=device_id)

    def observation_for(
        self,
        obs_group: ObservationGroup,
        *,
        patient_id: str,
        device_id: str,
        encounter_id: str | None = None,
        existing: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> ObservationChange:
        """Build (or merge into `existing`) the Observation for one observation group. Pure: the
        caller reads `existing` by `observation_key(...)[2]` and writes the result.
        Raises MappingFailure (incompatible_value, unknown_unit)."""
        template = self.template_for(obs_group.name)
        return build_change(
            template, obs_group, patient_id=patient_id, device_id=device_id,
            encounter_id=encounter_id, existing=existing, now=now,
        )

    def observations(
        self,
        group: MeasurementGroup,
        *,
        patient_id: str,
        device_id: str,
        encounter_id: str | None = None,
        existing: Callable[[str], dict[str, Any] | None] = lambda _id: None,
        now: datetime | None = None,
    ) -> list[ObservationChange]:
        """All Observation changes for one measurement group, one per Observation id.

        `existing(id)` returns the stored Observation or None. Observation groups that share an
        id (two single readings in the same second, which MedTech's seconds-precision identifier
        merges) are folded into one change, so the caller can write the list in any order.
        """
        changes: dict[str, ObservationChange] = {}
        for obs_group in self.observation_groups(group):
            _, _, obs_id = self.observation_key(obs_group, patient_id=patient_id, device_id=device_id)
            previous = changes.get(obs_id)
            current = previous.resource if previous else existing(obs_id)
            change = self.observation_for(
                obs_group, patient_id=patient_id, device_id=device_id, encounter_id=encounter_id,
                existing=current, now=now,
            )
            if previous is not None:
                # Stored state is what the first change started from: create stays create.
                if previous.action == "create":
                    change.action = "create"
                elif change.action == "noop":
                    change.action = previous.action
            changes[obs_id] = change
        return list(changes.values())


# ------------------------------------------------------------------------------------------------
# Loading


def load_fhir_templates(
    source: str | Path | dict | list, *, name: str | None = None, strict: bool = True
) -> FhirTemplateSet:
    """Load a FHIR mapping file (a `CollectionFhir`, or one bare `CodeValueFhir`).

    Problems are collected and raised together as a `TemplateError` (file, template index, field).
    """
    document, display = read_template_source(source, name)
    errors = ErrorList(display)
    templates: list[CodeValueTemplate] = []
    seen: dict[str, int] = {}
    entries = collection_entries(document, errors, collection=COLLECTION, single=frozenset({CODE_VALUE.lower()}),
                                 other_file_hint=lambda kind: kind.endswith("content"), other_file="device mapping")
    for index, entry in entries:
        template = _load_one(index, entry, errors)
        body = entry.get("template") if isinstance(entry, dict) else None
        name = body.get("typeName") if isinstance(body, dict) else None
        if isinstance(name, str) and name.strip():
            # Duplicates are reported even against a template that is itself invalid.
            key = name.strip().lower()
            if key in seen:
                errors.add(index, "typeName", f"duplicate template for typeName {name.strip()!r} "
                           f"(template[{seen[key]}] already defines it)", name.strip())
                continue
            seen[key] = index
        if template is not None:
            templates.append(template)
    if strict:
        errors.raise_if_any()
    return FhirTemplateSet(templates, display, list(errors.issues))


def _load_one(index: int, entry: Any, errors: ErrorList) -> CodeValueTemplate | None:
    if not isinstance(entry, dict):
        errors.add(index, "", "each template must be an object with templateType and template")
        return None
    body = entry.get("template")
    type_name = body.get("typeName") if isinstance(body, dict) else None
    type_name = type_name.strip() if isinstance(type_name, str) and type_name.strip() else None
    raw_type = entry.get("templateType")
    if not isinstance(raw_type, str) or raw_type.strip().lower() not in (CODE_VALUE.lower(), "codevaluefhirtemplate"):
        errors.add(
            index, "templateType", f"unknown FHIR template type {raw_type!r}; expected {CODE_VALUE!r}", type_name
        )
        return None
    if not isinstance(body, dict):
        errors.add(index, "template", f"{CODE_VALUE} needs a template object", type_name)
        return None
    before = len(errors.issues)

    def issue(field_: str, message: str) -> None:
        errors.add(index, field_, message, type_name)

    if type_name is None:
        issue("typeName", "required field 'typeName' is missing or blank")

    interval = _interval(body.get("periodInterval", 0))
    if interval is None:
        issue("periodInterval", f"periodInterval must be 0, 60, 1440 or -1, got {body.get('periodInterval')!r}")

    if "codes" not in body or body.get("codes") is None:
        issue("codes", "required field 'codes' is missing")
        codes: tuple[FhirCode, ...] = ()
    else:
        codes = _codes(body.get("codes"), "codes", issue)

    category: list[CategoryConcept] = []
    raw_category = body.get("category")
    if raw_category is not None:
        if not isinstance(raw_category, list):
            issue("category", "category must be an array of {text, codes}")
        else:
            for i, c in enumerate(raw_category):
                if not isinstance(c, dict):
                    issue(f"category[{i}]", "each category must be an object with text and/or codes")
                    continue
                category.append(
                    CategoryConcept(_str(c.get("text")), _codes(c.get("codes") or [], f"category[{i}].codes", issue))
                )

    value = None
    if body.get("value") is not None:
        value = _value(body["value"], "value", issue)
    components: list[ComponentTemplate] = []
    raw_components = body.get("components")
    if raw_components is not None:
        if not isinstance(raw_components, list):
            issue("components", "components must be an array")
        else:
            for i, comp in enumerate(raw_components):
                where = f"components[{i}]"
                if not isinstance(comp, dict):
                    issue(where, "each component must be an object with codes and value")
                    continue
                if comp.get("codes") is None:
                    issue(f"{where}.codes", "required field 'codes' is missing")
                comp_codes = _codes(comp.get("codes") or [], f"{where}.codes", issue)
                if comp.get("value") is None:
                    issue(f"{where}.value", "required field 'value' is missing")
                    continue
                comp_value = _value(comp["value"], f"{where}.value", issue)
                if comp_value is not None:
                    components.append(ComponentTemplate(comp_codes, comp_value))

    names = ([value.value_name] if value else []) + [c.value.value_name for c in components]
    if len(names) != len(set(names)):
        issue("components", "each value and component must use a different valueName")

    if len(errors.issues) > before or type_name is None or interval is None:
        return None
    return CodeValueTemplate(
        index=index,
        type_name=type_name,
        period_interval=interval,
        codes=codes,
        category=tuple(category),
        value=value,
        components=tuple(components),
        unknown_fields=tuple(sorted(k for k in body if k not in KNOWN_FIELDS)),
        source=entry,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _interval(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and int(value) == value and int(value) in PERIOD_INTERVALS:
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _INTERVAL_NAMES:
            return _INTERVAL_NAMES[text]
        try:
            number = int(text)
        except ValueError:
            return None
        return number if number in PERIOD_INTERVALS else None
    return None


def _codes(raw: Any, where: str, issue: Callable[[str, str], None]) -> tuple[FhirCode, ...]:
    if not isinstance(raw, list):
        issue(where, "codes must be an array of {code, system, display}")
        return ()
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict):
            issue(f"{where}[{i}]", "each code must be an object with code, system and display")
            continue
        out.append(FhirCode(_str(c.get("code")), _str(c.get("system")), _str(c.get("display"))))
    return tuple(out)


def _value(raw: Any, where: str, issue: Callable[[str, str], None]) -> ValueTemplate | None:
    if not isinstance(raw, dict):
        issue(where, "value must be an object with valueName and valueType")
        return None
    ok = True
    name = raw.get("valueName")
    if not isinstance(name, str) or not name.strip():
        issue(f"{where}.valueName", "required field 'valueName' is missing or blank")
        ok = False
    raw_type = raw.get("valueType")
    vtype = VALUE_TYPES.get(raw_type.strip().lower()) if isinstance(raw_type, str) else None
    if vtype is None:
        issue(f"{where}.valueType", f"valueType must be one of {', '.join(VALUE_TYPES.values())}, got {raw_type!r}")
        ok = False
    period = None
    if vtype == SAMPLED_DATA:
        p = raw.get("defaultPeriod")
        if isinstance(p, bool) or not isinstance(p, int | float) or p <= 0:
            issue(f"{where}.defaultPeriod", f"SampledData needs a positive defaultPeriod in milliseconds, got {p!r}")
            ok = False
        else:
            period = float(p)
    if not ok or not isinstance(name, str) or vtype is None:  # each of these already failed `ok`
        return None
    return ValueTemplate(
        value_type=vtype,
        value_name=name.strip(),
        unit=_str(raw.get("unit")),
        code=_str(raw.get("code")),
        system=_str(raw.get("system")),
        default_period=period,
        text=_str(raw.get("text")),
        codes=_codes(raw.get("codes") or [], f"{where}.codes", issue) if vtype == CODEABLE_CONCEPT else (),
    )
