"""`vigil templates check`: load both template files, warn about known mistakes, dry-run messages.

Pure: it reads the two template files it is given and nothing else; the caller reads the
messages (e.g. a JSONL file) and prints the report (`CheckReport.to_text()` / `to_dict()`).

Warnings are about templates that load but would write wrong or surprising data — the mistakes the
MedTech samples themselves carry (the iomt-fhir README, https://github.com/microsoft/iomt-fhir):

* a blood-pressure component coded as heart rate (LOINC 8867-4);
* a Quantity/String value with periodInterval other than 0 (fails on the second reading in the
  window: one value per Observation);
* a unit that does not fit the code, or a Quantity without a UCUM system/code for a vital sign;
* device templates whose typeName has no FHIR template (their data would be dead-lettered),
  device values the FHIR template never writes, FHIR values no device template produces;
* SampledData windows of thousands of slots, unknown fields (typos), templates without a value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from common.codes import (
    BP_PANEL,
    CANONICAL_UNIT_BY_LOINC,
    DIASTOLIC_BP,
    HEART_RATE_CODES,
    LOINC,
    SYSTOLIC_BP,
    UCUM,
    VITAL_SIGN_CODES,
)
from common.jsonnum import dumps
from ingest.templates.device import DeviceTemplateSet
from ingest.templates.device_loader import load_device_templates
from ingest.templates.device_template import KNOWN_FIELDS as DEVICE_FIELDS
from ingest.templates.device_template import KNOWN_VALUE_FIELDS as DEVICE_VALUE_FIELDS
from ingest.templates.dryrun import MessageCheck, dry_run
from ingest.templates.errors import TemplateError, TemplateIssue
from ingest.templates.fhir import KNOWN_FIELDS as FHIR_FIELDS
from ingest.templates.fhir import (
    QUANTITY,
    SAMPLED_DATA,
    STRING,
    CodeValueTemplate,
    FhirCode,
    FhirTemplateSet,
    ValueTemplate,
    load_fhir_templates,
)
from ingest.templates.grouping import DAILY, HOURLY
from ingest.templates.units import can_convert, is_known_unit, to_ucum

MAX_SAMPLED_SLOTS = 1000


@dataclass(frozen=True)
class CheckWarning:
    code: str  # stable identifier, e.g. "bp_component_heart_rate"
    file: str
    index: int | None
    type_name: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file + (f": template[{self.index}]" if self.index is not None else "")
        if self.type_name:
            where += f" ({self.type_name})"
        if self.field:
            where += f" {self.field}"
        return f"{where}: {self.message} [{self.code}]"


@dataclass
class CheckReport:
    errors: list[TemplateIssue] = field(default_factory=list)
    warnings: list[CheckWarning] = field(default_factory=list)
    messages: list[MessageCheck] = field(default_factory=list)
    # With merge=True: the Observations of all messages taken as one delivery (see dryrun.py).
    batch: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        """The templates load; messages may still be dead-lettered (see `messages`)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": [str(e) for e in self.errors],
            "warnings": [
                {"code": w.code, "file": w.file, "index": w.index, "typeName": w.type_name, "field": w.field,
                 "message": w.message}
                for w in self.warnings
            ],
            "messages": [
                {
                    "message": m.number,
                    "measurements": [x.to_dict() for x in m.measurements],
                    "observations": m.observations,
                    "deadLetter": [e.to_dict() for e in m.errors],
                    "notes": m.notes,
                }
                for m in self.messages
            ],
            **({"batchObservations": self.batch} if self.batch is not None else {}),
        }

    def to_text(self) -> str:
        lines: list[str] = []
        for e in self.errors:
            lines.append(f"ERROR {e}")
        for w in self.warnings:
            lines.append(f"WARN  {w}")
        for m in self.messages:
            lines.append(f"message {m.number}: {len(m.measurements)} measurement(s), "
                         f"{len(m.observations)} Observation(s)" + (" — DEAD LETTER" if m.errors else ""))
            for x in m.measurements:
                values = ", ".join(f"{p.name}={p.value}" + (f" [{p.unit}]" if p.unit else "") for p in x.properties)
                lines.append(f"  measurement {x.type} device={x.device_id} patient={x.patient_id} "
                             f"at {x.occurrence_time.isoformat()}: {values}")
            for o in m.observations:
                lines.append(f"  Observation/{o['id'][:12]}… {o['code'].get('text')} "
                             f"{dumps(_value_summary(o), ensure_ascii=False)}")
            for failure in m.errors:
                lines.append(f"  dead letter [{failure.reason}] {failure.detail}")
            for n in m.notes:
                lines.append(f"  note: {n}")
        if self.batch is not None:
            lines.append(f"batch: the {len(self.messages)} message(s) as one delivery: "
                         f"{len(self.batch)} Observation(s)")
            for o in self.batch:
                lines.append(f"  Observation/{o['id'][:12]}… {o['code'].get('text')} "
                             f"{dumps(_value_summary(o), ensure_ascii=False)}")
        if not lines:
            lines.append("templates load; no warnings")
        return "\n".join(lines)


def _value_summary(obs: dict[str, Any]) -> Any:
    def short(holder: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in holder.items() if k.startswith("value")}
        sampled = out.get("valueSampledData")
        if sampled and len(sampled.get("data", "")) > 60:
            tokens = sampled["data"].split()
            shown = [f"{i}:{t}" for i, t in enumerate(tokens) if t != "E"]
            out["valueSampledData"] = {**sampled, "data": f"{len(tokens)} slots, readings at {' '.join(shown[:10])}"}
        return out

    if "component" in obs:
        return {"component": [short(c) for c in obs["component"]]}
    return short(obs)


def check_templates(
    device_path: str | Path | dict | None,
    fhir_path: str | Path | dict | None,
    messages: Iterable[Any] = (),
    *,
    validate_fhir: bool = True,
    merge: bool = False,
    now: datetime | None = None,
    max_future_skew: timedelta | None = None,
) -> CheckReport:
    """Load and validate both template files, report warnings, dry-run `messages` (dicts, JSON
    text or bytes; a dict with only Body/Properties/SystemProperties keys is taken as an already
    wrapped envelope, so IoT Hub samples can carry their properties). Patient and Device ids in
    the Observations are those Create mode would assign (sha256 of the identifier); a dry run
    does not look anything up.

    `merge=True` takes the messages as one delivery, as the pipeline takes a batch: readings of
    several messages that fall in one Observation (an hourly SampledData, a correlation id) are
    merged into it, and `report.batch` lists those Observations; each message keeps its own
    measurements and dead-letter reasons."""
    report = CheckReport()
    devices: DeviceTemplateSet | None = None
    fhir: FhirTemplateSet | None = None
    if device_path is not None:
        try:
            devices = load_device_templates(device_path)
        except TemplateError as exc:
            report.errors.extend(exc.issues)
    if fhir_path is not None:
        try:
            fhir = load_fhir_templates(fhir_path)
        except TemplateError as exc:
            report.errors.extend(exc.issues)
    if devices is not None:
        report.warnings.extend(_device_warnings(devices))
    if fhir is not None:
        report.warnings.extend(_fhir_warnings(fhir))
    if devices is not None and fhir is not None:
        report.warnings.extend(_cross_warnings(devices, fhir))
    if devices is not None:
        report.messages, report.batch = dry_run(list(messages), devices, fhir, validate_fhir=validate_fhir,
                                                merge=merge, now=now, max_future_skew=max_future_skew)
    return report


# --- warnings -----------------------------------------------------------------------------------


def _unknown_field_warnings(file: str, index: int, type_name: str | None, unknown: Iterable[str],
                            known: set[str]) -> list[CheckWarning]:
    out = []
    for name in unknown:
        leaf = name.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        out.append(CheckWarning("unknown_field", file, index, type_name, name,
                                f"unknown field {name!r} is ignored{hint}"))
    return out


def _device_warnings(devices: DeviceTemplateSet) -> list[CheckWarning]:
    out: list[CheckWarning] = []
    if not devices.templates:
        out.append(CheckWarning("no_templates", devices.name, None, None, "template",
                                "the collection is empty: every message will be dead-lettered (no_template_matched)"))
    for t in devices.templates:
        out.extend(_unknown_field_warnings(devices.name, t.index, t.type_name, t.unknown_fields,
                                           DEVICE_FIELDS | DEVICE_VALUE_FIELDS))
    return out


def _loinc(codes: Iterable[FhirCode]) -> list[str]:
    return [c.code for c in codes if c.system == LOINC and c.code]


def _fhir_warnings(fhir: FhirTemplateSet) -> list[CheckWarning]:
    out: list[CheckWarning] = []
    for t in fhir.templates:
        def warn(code: str, field_: str, message: str, t: CodeValueTemplate = t) -> None:
            out.append(CheckWarning(code, fhir.name, t.index, t.type_name, field_, message))

        out.extend(_unknown_field_warnings(fhir.name, t.index, t.type_name, t.unknown_fields, FHIR_FIELDS))
        if t.value is None and not t.components:
            warn("no_value", "value", "template has neither value nor components: Observations carry no value "
                 "(the vital-signs profile needs a value or dataAbsentReason)")
        panel = BP_PANEL[0] in _loinc(t.codes)
        for i, comp in enumerate(t.components):
            where = f"components[{i}]"
            codes = _loinc(comp.codes)
            name = comp.value.value_name.lower()
            displays = " ".join((c.display or "").lower() for c in comp.codes)
            bp_like = (
                panel or "systolic" in name or "diastolic" in name or "systolic" in displays or "diastolic" in displays
            )
            for code in codes:
                if code in HEART_RATE_CODES and bp_like:
                    right = DIASTOLIC_BP if ("diastolic" in name or "diastolic" in displays) else SYSTOLIC_BP
                    warn("bp_component_heart_rate", f"{where}.codes",
                         f"component {comp.value.value_name!r} is coded LOINC {code} (heart rate) inside a blood "
                         f"pressure Observation; use {right} "
                         f"({'diastolic' if right == DIASTOLIC_BP else 'systolic'} blood pressure)")
            _value_warnings(warn, t, comp.value, codes or _loinc(t.codes), f"{where}.value")
        if t.value is not None:
            _value_warnings(warn, t, t.value, _loinc(t.codes), "value")
    return out


def _value_warnings(warn: Any, t: CodeValueTemplate, value: ValueTemplate, loinc: list[str], where: str) -> None:
    if value.value_type in (QUANTITY, STRING) and t.period_interval != 0:
        warn("single_value_period_interval", "periodInterval",
             f"{value.value_type} value {value.value_name!r} with periodInterval {t.period_interval}: a second "
             "reading in the same window fails (one value per Observation); use periodInterval 0")
    if value.value_type == SAMPLED_DATA and value.default_period:
        window_ms = {HOURLY: 3_600_000, DAILY: 86_400_000}.get(t.period_interval)
        if window_ms and window_ms / value.default_period > MAX_SAMPLED_SLOTS:
            warn("sampled_data_size", f"{where}.defaultPeriod",
                 f"defaultPeriod {value.default_period:g} ms in a {t.period_interval}-minute window gives "
                 f"{int(window_ms / value.default_period)} slots per Observation ('E' where there is no reading)")
    if value.value_type not in (QUANTITY, SAMPLED_DATA):
        return
    canonical = next((CANONICAL_UNIT_BY_LOINC[c] for c in loinc if c in CANONICAL_UNIT_BY_LOINC), None)
    declared = value.code if value.code and value.system in (None, UCUM) else value.unit
    if canonical is None:
        return
    code_list = ", ".join(loinc)
    if not declared:
        warn(
            "unit_missing", f"{where}.unit", f"no unit for LOINC {code_list}; the canonical UCUM unit is {canonical!r}"
        )
        return
    if not is_known_unit(declared):
        warn("unit_mismatch", f"{where}.unit", f"unit {declared!r} is not a unit Vigil knows; LOINC {code_list} "
             f"is measured in {canonical!r}")
        return
    ucum = to_ucum(declared)
    if ucum != canonical:
        if can_convert(ucum, canonical):
            warn("unit_not_canonical", f"{where}.unit", f"unit {declared!r} fits LOINC {code_list} but is not its "
                 f"canonical unit {canonical!r}; rules compare in {canonical!r}")
        else:
            warn("unit_mismatch", f"{where}.unit", f"unit {declared!r} does not fit LOINC {code_list} "
                 f"(measured in {canonical!r})")
    if value.value_type == QUANTITY and any(c in VITAL_SIGN_CODES for c in loinc):
        if value.system != UCUM or not value.code:
            warn("unit_not_ucum", f"{where}.system",
                 f"Quantity for vital sign LOINC {code_list} needs system {UCUM!r} and a UCUM code "
                 f"(e.g. {canonical!r}) to meet the R4 vital-signs profile")
        elif value.code != canonical and value.code == declared and ucum != value.code:
            warn("unit_not_ucum", f"{where}.code", f"{value.code!r} is not a UCUM code; use {ucum!r}")


def _cross_warnings(devices: DeviceTemplateSet, fhir: FhirTemplateSet) -> list[CheckWarning]:
    out: list[CheckWarning] = []
    produced: dict[str, set[str]] = {}
    for t in devices.templates:
        produced.setdefault(t.type_name.lower(), set()).update(v.name for v in t.values)
    reported: set[str] = set()
    for t in devices.templates:
        if not fhir.has_template(t.type_name):
            if t.type_name.lower() not in reported:
                reported.add(t.type_name.lower())
                out.append(CheckWarning("no_fhir_template", devices.name, t.index, t.type_name, "typeName",
                                        f"no FHIR template has typeName {t.type_name!r}: its measurements will be "
                                        "dead-lettered (template_not_found)"))
            continue
        fhir_names = set(fhir.template_for(t.type_name).value_names)
        for v in t.values:
            if v.name not in fhir_names:
                out.append(CheckWarning("value_not_mapped", devices.name, t.index, t.type_name, f"values[{v.name}]",
                                        f"value {v.name!r} is not written by the FHIR template {t.type_name!r}"))
    for ft in fhir.templates:
        names = produced.get(ft.type_name.lower())
        if names is None:
            out.append(CheckWarning("fhir_template_unused", fhir.name, ft.index, ft.type_name, "typeName",
                                    f"no device template produces typeName {ft.type_name!r}"))
            continue
        for name in ft.value_names:
            if name not in names:
                out.append(CheckWarning("fhir_value_never_produced", fhir.name, ft.index, ft.type_name, name,
                                        f"valueName {name!r} is produced by no device template of this type"))
    return out
