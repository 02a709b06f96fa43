"""Build and merge Observations exactly as MedTech does, so a migration updates its Observations.

Identity (iomt-fhir `FhirImportService`, `IdentifierExtensions`):
  identifier = {system: SERVICE_SYSTEM, value: "{patientId}.{deviceId}.{type}.{segment}"}, where
  segment is `yyyyMMddHHmmssZ.yyyyMMddHHmmssZ` of the group window or the correlation id, and
  id = sha256_hex("{system}_{value}"). patientId/deviceId are FHIR resource ids.

Content: status `final`; code = template codes + `{SERVICE_SYSTEM, typeName}` with text = type;
components likewise with the valueName; `effectivePeriod` = the window; subject, device, encounter.

Merge (iomt-fhir `CodeValueFhirTemplateProcessor.MergeObservation`): the period widens to cover new
data; SampledData streams merge slot by slot with the new value winning a collision (PR #262);
Quantity/String/CodeableConcept are replaced. If nothing changed, no write (`noop`); otherwise
status becomes `amended`.

Vigil additions:
* `category: vital-signs` when the template gives no category and one of its LOINC codes is a
  vital sign (FHIR R4 Vital Signs profile, https://hl7.org/fhir/R4/observation-vitalsigns.html).
* unit conversion to the Observation's unit (`ingest.templates.units`), with the device's own
  value in an extension.
* an `ingested-at` extension: a replace-type value (Quantity, String, CodeableConcept) is only
  replaced by data ingested later, so a stale re-delivery cannot undo a correction. Replaying the
  same data is still a no-op.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from common.codes import LOINC, OBSERVATION_CATEGORY, UCUM, VITAL_SIGN_CODES
from common.jsondata import json_copy
from common.jsonnum import number
from ingest.templates.errors import INCOMPATIBLE_VALUE, MappingFailure
from ingest.templates.fhir_model import CodeValueTemplate, ObservationChange, ValueTemplate
from ingest.templates.grouping import ObservationGroup, TimedValue
from ingest.templates.instant import Instant, fraction_digits, parse_iso, ticks_of
from ingest.templates.measurement import value_text
from ingest.templates.units import convert, original_value_extension, target_unit

SERVICE_SYSTEM = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/"
INGESTED_AT_URL = "urn:vigil:extension:ingested-at"
VITAL_SIGNS_CATEGORY = {
    "coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}],
    "text": "Vital Signs",
}
_IGNORED_IN_COMPARISON = ("status", "issued", "meta", "text")


def sha256_id(system: str | None, value: str) -> str:
    """MedTech's deterministic resource id: sha256 hex of "{system}_{value}" (system may be empty)."""
    return hashlib.sha256(f"{system or ''}_{value}".encode()).hexdigest()


def observation_identity(group: ObservationGroup, *, patient_id: str, device_id: str) -> tuple[str, str, str]:
    if not patient_id or not patient_id.strip() or not device_id or not device_id.strip():
        raise ValueError("patient_id and device_id (FHIR resource ids) are required")
    value = f"{patient_id}.{device_id}.{group.name}.{group.id_segment}"
    return SERVICE_SYSTEM, value, sha256_id(SERVICE_SYSTEM, value)


def fhir_instant(value: datetime) -> str:
    """UTC instant text as MedTech writes it: seconds, then the fraction to the 100-ns tick without
    trailing zeros, `Z` (a window end one tick before the next window: `...59.9999999Z`)."""
    value = value.astimezone(UTC)
    # Formatted by hand: datetime.strftime costs more than the rest of an Observation build.
    text = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
    if value.microsecond or getattr(value, "extra_ticks", 0):
        text += "." + fraction_digits(value).rstrip("0")
    return text + "Z"


def parse_instant(text: str) -> datetime:
    """A stored FHIR instant, to the tick."""
    value = parse_iso(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # FHIR dateTime without offset: read as UTC
    return value.astimezone(UTC)


def _code(type_name: str, codes: Any) -> dict[str, Any]:
    return {
        "coding": [c.coding() for c in codes] + [{"system": SERVICE_SYSTEM, "code": type_name, "display": type_name}],
        "text": type_name,
    }


def _categories(template: CodeValueTemplate) -> list[dict[str, Any]] | None:
    if template.category:
        return [c.concept() for c in template.category]
    codes = list(template.codes)
    if any(c.system == LOINC and c.code in VITAL_SIGN_CODES for c in codes):
        return [json_copy(VITAL_SIGNS_CATEGORY)]
    return None


def build_change(
    template: CodeValueTemplate,
    group: ObservationGroup,
    *,
    patient_id: str,
    device_id: str,
    encounter_id: str | None,
    existing: dict[str, Any] | None,
    now: datetime | None,
) -> ObservationChange:
    system, value, obs_id = observation_identity(group, patient_id=patient_id, device_id=device_id)
    now = now or datetime.now(UTC)
    if existing is None:
        resource = _create(template, group, system, value, obs_id, patient_id, device_id, encounter_id, now)
        return ObservationChange(resource, "create", obs_id, (system, value))
    merged = _merge(template, group, existing, now)
    if _comparable(merged) == _comparable(existing):
        return ObservationChange(existing, "noop", obs_id, (system, value))
    merged["status"] = "amended"
    merged["issued"] = fhir_instant(now)
    return ObservationChange(merged, "update", obs_id, (system, value))


def _comparable(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k not in _IGNORED_IN_COMPARISON}
    # The ingestion stamp changes on every replay; it is bookkeeping, not content.
    ext = [e for e in out.get("extension", []) if e.get("url") != INGESTED_AT_URL]
    if ext:
        out["extension"] = ext
    else:
        out.pop("extension", None)
    return out


def _create(
    template: CodeValueTemplate, group: ObservationGroup, system: str, value: str, obs_id: str,
    patient_id: str, device_id: str, encounter_id: str | None, now: datetime,
) -> dict[str, Any]:
    obs: dict[str, Any] = {"resourceType": "Observation", "id": obs_id}
    ingested = group.latest_ingestion
    if ingested is not None:
        obs["extension"] = [{"url": INGESTED_AT_URL, "valueDateTime": fhir_instant(ingested)}]
    obs["identifier"] = [{"system": system, "value": value}]
    obs["status"] = "final"
    categories = _categories(template)
    if categories:
        obs["category"] = categories
    obs["code"] = _code(group.name, template.codes)
    obs["subject"] = {"reference": f"Patient/{patient_id}"}
    if encounter_id:
        obs["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    obs["effectivePeriod"] = {"start": fhir_instant(group.start), "end": fhir_instant(group.end)}
    obs["issued"] = fhir_instant(now)
    obs["device"] = {"reference": f"Device/{device_id}"}
    codings = [c.coding() for c in template.codes]
    if template.value is not None and template.value.value_name in group.values:
        key, val = _value(template.value, group.values[template.value.value_name], group.start, group.end, codings)
        obs[key] = val
    components = []
    for comp in template.components:
        series = group.values.get(comp.value.value_name)
        if series is None:
            continue
        key, val = _value(comp.value, series, group.start, group.end, [c.coding() for c in comp.codes])
        components.append({"code": _code(comp.value.value_name, comp.codes), key: val})
    if components:
        obs["component"] = components
    return obs


def _merge(
    template: CodeValueTemplate, group: ObservationGroup, existing: dict[str, Any], now: datetime
) -> dict[str, Any]:
    merged = json_copy(existing)
    categories = _categories(template)
    if categories:
        merged["category"] = categories
    else:
        merged.pop("category", None)

    old_start, old_end = _period(existing)
    start, end = min(old_start, group.start), max(old_end, group.end)
    for other in ("effectiveDateTime", "effectiveInstant", "effectiveTiming"):
        merged.pop(other, None)  # effective[x] is a choice: only the period may remain
    merged["effectivePeriod"] = {"start": fhir_instant(start), "end": fhir_instant(end)}

    stored_ingestion = _stored_ingestion(existing)
    incoming_ingestion = group.latest_ingestion
    stale = stored_ingestion is not None and incoming_ingestion is not None and incoming_ingestion < stored_ingestion

    codings = [c.coding() for c in template.codes]
    if template.value is not None and template.value.value_name in group.values:
        _merge_value(
            merged, template.value, group.values[template.value.value_name], (old_start, start, end), codings, stale
        )
    if template.components:
        comps = merged.setdefault("component", [])
        for comp in template.components:
            series = group.values.get(comp.value.value_name)
            if series is None:
                continue
            found = next(
                (c for c in comps if any(
                    cd.get("system") == SERVICE_SYSTEM and cd.get("code") == comp.value.value_name
                    for cd in c.get("code", {}).get("coding", [])
                )),
                None,
            )
            comp_codings = [c.coding() for c in comp.codes]
            if found is None:
                key, val = _value(comp.value, series, start, end, comp_codings)
                comps.append({"code": _code(comp.value.value_name, comp.codes), key: val})
            else:
                _merge_value(found, comp.value, series, (old_start, start, end), comp_codings, stale)
        if not comps:
            merged.pop("component")

    if incoming_ingestion is not None and (stored_ingestion is None or incoming_ingestion > stored_ingestion):
        others = [e for e in merged.get("extension", []) if e.get("url") != INGESTED_AT_URL]
        merged["extension"] = [{"url": INGESTED_AT_URL, "valueDateTime": fhir_instant(incoming_ingestion)}, *others]
    return merged


def _period(resource: dict[str, Any]) -> tuple[datetime, datetime]:
    if "effectivePeriod" in resource:
        p = resource["effectivePeriod"]
        start = parse_instant(p["start"])
        return start, parse_instant(p.get("end", p["start"]))
    if "effectiveDateTime" in resource:
        t = parse_instant(resource["effectiveDateTime"])
        return t, t
    raise MappingFailure(INCOMPATIBLE_VALUE, "the stored Observation has no effective time to merge into")


def _stored_ingestion(resource: dict[str, Any]) -> datetime | None:
    for e in resource.get("extension", []):
        if e.get("url") == INGESTED_AT_URL and e.get("valueDateTime"):
            return parse_instant(e["valueDateTime"])
    return None


_VALUE_KEYS = {"SampledData": "valueSampledData", "Quantity": "valueQuantity", "String": "valueString",
               "CodeableConcept": "valueCodeableConcept"}


def _merge_value(
    holder: dict[str, Any], template: ValueTemplate, series: list[TimedValue],
    periods: tuple[datetime, datetime, datetime], codings: list[dict[str, Any]], stale: bool,
) -> None:
    old_start, start, end = periods
    key = _VALUE_KEYS[template.value_type]
    if template.value_type == "SampledData" and isinstance(holder.get(key), dict):
        holder[key] = _merge_sampled(template, holder[key], old_start, series, start, end, codings)
        return
    if stale and key in holder:
        return  # data ingested before what is stored: keep the later correction
    for other in _VALUE_KEYS.values():
        holder.pop(other, None)
    new_key, val = _value(template, series, start, end, codings)
    holder[new_key] = val


# --- value types --------------------------------------------------------------------------------


def _value(
    template: ValueTemplate, series: list[TimedValue], start: datetime, end: datetime, codings: list[dict[str, Any]]
) -> tuple[str, Any]:
    vtype = template.value_type
    if vtype == "SampledData":
        return "valueSampledData", _sampled(
            template, [(v.time, _converted_text(template, v, codings)) for v in series], start, end
        )
    if vtype == "CodeableConcept":
        concept: dict[str, Any] = {}
        if template.codes:
            concept["coding"] = [c.coding() for c in template.codes]
        if template.text:
            concept["text"] = template.text
        return "valueCodeableConcept", concept
    single = _single(template, series)
    if vtype == "String":
        return "valueString", single.value
    return "valueQuantity", _quantity(template, single, codings)


def _single(template: ValueTemplate, series: list[TimedValue]) -> TimedValue:
    if len(series) != 1:
        raise MappingFailure(
            INCOMPATIBLE_VALUE,
            f"{template.value_type} value {template.value_name!r} expects 1 value per Observation, received "
            f"{len(series)}; use periodInterval 0 for {template.value_type} templates",
            field=template.value_name,
        )
    return series[0]


# A Quantity value as MedTech reads it: `decimal.Parse(value, CultureInfo.InvariantCulture)`, whose
# default style (NumberStyles.Number) takes an optional sign, digits and a decimal point, and no
# exponent (iomt-fhir QuantityFhirValueProcessor). Thousands separators, which that style also
# takes, are refused: "72,5" from a decimal-comma locale would silently become 725.
_DECIMAL = re.compile(r"\s*([+-]?)(\d*)(?:\.(\d*))?\s*")
_EXPONENT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+\s*")


def _number(text: str, template: ValueTemplate) -> int | float:
    """The value as a JSON number with the precision it was written with: an int, or a
    WrittenNumber whose token keeps its digits ("22.40" stays 22.40: FHIR decimals keep their
    significant digits)."""
    match = _DECIMAL.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        if _EXPONENT.fullmatch(text):
            reason = "is written with an exponent; MedTech's Quantity takes plain decimals only (e.g. 1000, 0.0015)"
        elif "," in text:
            reason = "has a comma; write a decimal point and no thousands separators"
        else:
            reason = "is not a number"
        raise MappingFailure(INCOMPATIBLE_VALUE, f"value {template.value_name!r} {reason}", field=template.value_name)
    sign, whole, fraction = match.groups()
    if fraction is None or (not fraction and whole):
        return int(f"{sign}{whole}")  # "120", "120." -> 120
    # Canonical JSON number, digits as given: "+.50" -> 0.50, "007.10" -> 7.10.
    return number(f"{'-' if sign == '-' else ''}{whole.lstrip('0') or '0'}.{fraction}")


def _quantity(template: ValueTemplate, tv: TimedValue, codings: list[dict[str, Any]]) -> dict[str, Any]:
    number = _number(tv.value, template)
    if tv.unit is None:
        # No unit declared on the device side: write what the template says (MedTech behaviour).
        q: dict[str, Any] = {"value": number}
        for k, v in (("unit", template.unit), ("system", template.system), ("code", template.code)):
            if v:
                q[k] = v
        return q
    target = target_unit(template.unit, template.code, template.system, codings) or tv.unit
    converted = convert(float(number), tv.unit, target) if target != tv.unit else number
    q = {"value": converted, "unit": template.unit or target, "system": UCUM, "code": target}
    if target != tv.unit:
        q["extension"] = [original_value_extension(number, tv.unit, tv.unit)]
    return q


def _converted_text(template: ValueTemplate, tv: TimedValue, codings: list[dict[str, Any]]) -> str:
    if tv.unit is None:
        return tv.value
    target = target_unit(template.unit, template.code, template.system, codings)
    if target is None or target == tv.unit:
        return tv.value
    return value_text(convert(float(_number(tv.value, template)), tv.unit, target))


# Slots are counted in .NET ticks (100 ns), the unit MedTech steps `defaultPeriod` in.
_TICKS_PER_MS = 10_000


def _slots(start: datetime, end: datetime, period_ms: float) -> tuple[int, int]:
    period_ticks = max(1, round(period_ms * _TICKS_PER_MS))
    span = ticks_of(end) - ticks_of(start)
    return span // period_ticks + 1, period_ticks


def _sampled(
    template: ValueTemplate, points: list[tuple[datetime, str]], start: datetime, end: datetime
) -> dict[str, Any]:
    period = template.default_period or 1000.0
    count, period_ticks = _slots(start, end, period)
    data = ["E"] * count
    origin_ticks = ticks_of(start)
    for time, text in sorted(points, key=lambda p: p[0]):
        index = (ticks_of(time) - origin_ticks) // period_ticks
        if 0 <= index < count:
            data[index] = text  # later readings in the same slot win
    origin: dict[str, Any] = {"value": 0}
    if template.unit:
        origin["unit"] = template.unit
    period_out: int | float = int(period) if float(period).is_integer() else period
    return {"origin": origin, "period": period_out, "dimensions": 1, "data": " ".join(data)}


def _merge_sampled(
    template: ValueTemplate, stored: dict[str, Any], stored_start: datetime,
    series: list[TimedValue], start: datetime, end: datetime, codings: list[dict[str, Any]],
) -> dict[str, Any]:
    period = float(stored.get("period") or template.default_period or 1000.0)
    period_ticks = max(1, round(period * _TICKS_PER_MS))
    points: dict[datetime, str] = {}
    tokens = (stored.get("data") or "").split()
    stored_ticks, start_ticks = ticks_of(stored_start), ticks_of(start)
    for i, token in enumerate(tokens):
        if token != "E":
            points[Instant.from_ticks(stored_ticks + i * period_ticks)] = token
    slot_of = {(ticks_of(t) - start_ticks) // period_ticks: t for t in points}
    for tv in series:
        slot = (ticks_of(tv.time) - start_ticks) // period_ticks
        if slot in slot_of:
            points.pop(slot_of[slot], None)  # collision: the new reading wins
        points[tv.time] = _converted_text(template, tv, codings)
        slot_of[slot] = tv.time
    return _sampled(template, list(points.items()), start, end)
