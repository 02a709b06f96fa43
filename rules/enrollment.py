"""Who is in which program, with which personal settings: CarePlan, Goal, Patient → PatientContext.

A patient is enrolled in a program by an active CarePlan (status `active`, period covering now)
whose `instantiatesCanonical` names the program's canonical URL or whose `category` carries one of
its codes. Per-patient rule overrides live on that CarePlan as `rule-override` extensions, so staff
can disable a rule or change a bound for one patient without editing the shared ruleset:

    {"url": "urn:vigil:extension:rule-override", "extension": [
        {"url": "rule", "valueString": "hf-weight-gain-1d"},
        {"url": "param", "valueString": "max_gain"},
        {"url": "value", "valueQuantity": {"value": 3, "system": "http://unitsofmeasure.org", "code": "[lb_av]"}}]}

or `{"url": "disabled", "valueBoolean": true}` in place of param/value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

from common.clock import parse_instant
from common.codes import UCUM
from common.patient_time import TIME_ZONE_EXTS, patient_time_zone
from rules.model import Program, Rule, Ruleset
from rules.quantity import Quantity, check_unit

OVERRIDE_URL = "urn:vigil:extension:rule-override"
TIMEZONE_URL = TIME_ZONE_EXTS[0]


@dataclass(frozen=True)
class RuleOverride:
    disabled: bool = False
    params: Mapping[str, Quantity] = field(default_factory=dict)


@dataclass(frozen=True)
class PatientContext:
    """Everything per patient the evaluator needs besides readings. Plain data."""

    patient_ref: str
    goals: tuple[dict[str, Any], ...] = ()
    overrides: Mapping[str, RuleOverride] = field(default_factory=dict)
    tz: tzinfo = UTC
    enrolled_since: datetime | None = None  # anchors an absence gap when there was never a reading


def careplan_active(careplan: dict[str, Any], now: datetime, tz: tzinfo = UTC) -> bool:
    """Active and its period covers `now`. A bare-date bound ("2026-11-20") is a whole calendar day
    in `tz`, the patient's zone (DESIGN §5: calendar days are the patient's), from its midnight to
    its last instant; bounds with a time and offset are instants whatever `tz` is."""
    if careplan.get("resourceType") != "CarePlan" or careplan.get("status") != "active":
        return False
    period = careplan.get("period") or {}
    start = period_bound(period.get("start"), tz=tz)
    end = period_bound(period.get("end"), end_of_day=True, tz=tz)
    return (start is None or start <= now) and (end is None or now <= end)


def enrolls(careplan: dict[str, Any], program: Program) -> bool:
    canonicals = {str(c).split("|")[0] for c in careplan.get("instantiatesCanonical") or []}
    if canonicals & {c.split("|")[0] for c in program.canonical}:
        return True
    for concept in careplan.get("category") or []:
        for coding in concept.get("coding") or []:
            for wanted in program.category:
                system, _, code = wanted.rpartition("|")
                if coding.get("code") == code and (not system or coding.get("system") == system):
                    return True
    return False


PROGRAM_CANONICAL_PREFIX = "urn:vigil:program:"  # how CarePlans name Vigil programs (rules/library)
PROGRAM_CATEGORY_SYSTEM = "urn:vigil:program"


def unknown_programs(careplan: dict[str, Any], programs: Iterable[Program]) -> list[str]:
    """The Vigil program ids a CarePlan names (`urn:vigil:program:<id>` canonicals, category codes
    in system `urn:vigil:program`) that no loaded program answers to. Other canonicals and
    categories belong to other systems and are not Vigil's to judge."""
    programs = list(programs)
    named = [str(c).split("|")[0] for c in careplan.get("instantiatesCanonical") or []]
    unknown = [c.removeprefix(PROGRAM_CANONICAL_PREFIX) for c in named if c.startswith(PROGRAM_CANONICAL_PREFIX)
               and not any(c in {k.split("|")[0] for k in p.canonical} for p in programs)]
    for concept in careplan.get("category") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") != PROGRAM_CATEGORY_SYSTEM or not coding.get("code"):
                continue
            one = {"resourceType": "CarePlan", "category": [{"coding": [coding]}]}
            if not any(enrolls(one, p) for p in programs):
                unknown.append(str(coding["code"]))
    return list(dict.fromkeys(unknown))


def enrolled_rulesets(careplans: Iterable[dict[str, Any]], rulesets: Sequence[Ruleset], now: datetime,
                      tz: tzinfo = UTC) -> list[Ruleset]:
    active = [cp for cp in careplans if careplan_active(cp, now, tz)]
    return [rs for rs in rulesets if any(enrolls(cp, rs.program) for cp in active)]


def patient_timezone(patient: dict[str, Any] | None, default: str = "UTC") -> tzinfo:
    """The patient's IANA zone (every accepted extension form, `common.patient_time`), else `default`."""
    return patient_time_zone(patient, default)


def overrides_from_careplans(careplans: Iterable[dict[str, Any]], rulesets: Sequence[Ruleset],
                             now: datetime, tz: tzinfo = UTC) -> tuple[dict[str, RuleOverride], list[str]]:
    """Overrides from the active CarePlans that enroll in `rulesets`, plus problems (for the log:
    they name rules and params only). An unusable override is skipped, never half-applied."""
    rules = {rule.id: rule for rs in rulesets for rule in rs.rules}
    disabled: set[str] = set()
    params: dict[str, dict[str, Quantity]] = {}
    problems: list[str] = []
    for careplan in careplans:
        if not careplan_active(careplan, now, tz) or not any(enrolls(careplan, rs.program) for rs in rulesets):
            continue
        for ext in careplan.get("extension") or []:
            if ext.get("url") == OVERRIDE_URL:
                problem = _apply(_parts(ext), rules, disabled, params)
                if problem:
                    problems.append(problem)
    ids = disabled | set(params)
    return {rid: RuleOverride(rid in disabled, params.get(rid, {})) for rid in ids}, problems


def _parts(ext: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ext.get("extension") or []:
        values = [v for k, v in part.items() if k.startswith("value")]
        if part.get("url") and values:
            out[part["url"]] = values[0]
    return out


def _apply(parts: dict[str, Any], rules: dict[str, Rule], disabled: set[str],
           params: dict[str, dict[str, Quantity]]) -> str | None:
    rule = rules.get(str(parts.get("rule", "")))
    if rule is None:
        return f"rule-override names unknown rule {parts.get('rule')!r}"
    if parts.get("disabled") is True:
        disabled.add(rule.id)
        return None
    name = parts.get("param")
    if name not in rule.params:
        return f"rule-override of {rule.id} names unknown param {name!r}; valid: {', '.join(sorted(rule.params))}"
    try:
        quantity = _quantity(parts.get("value"))
        for metric, _difference in rule.param_uses(name):
            check_unit(quantity, metric)
    except ValueError as exc:
        return f"rule-override of {rule.id}.{name}: {exc}"
    params.setdefault(rule.id, {})[name] = quantity
    return None


def _quantity(value: Any) -> Quantity:
    if isinstance(value, dict):
        unit = value.get("code") if value.get("system", UCUM) == UCUM else None
        return Quantity(float(value["value"]), unit or value.get("unit"))
    return Quantity.parse(value)


def override_extension(rule_id: str, *, disabled: bool = False, param: str | None = None,
                       value: Quantity | None = None) -> dict[str, Any]:
    """The CarePlan extension for one override (for staff tools and tests)."""
    parts: list[dict[str, Any]] = [{"url": "rule", "valueString": rule_id}]
    if disabled:
        parts.append({"url": "disabled", "valueBoolean": True})
    else:
        if param is None or value is None:
            raise ValueError("an override either disables the rule or sets a param to a value")
        quantity: dict[str, Any] = {"value": value.value}
        if value.unit:
            quantity |= {"system": UCUM, "code": value.unit, "unit": value.unit}
        parts += [{"url": "param", "valueString": param}, {"url": "value", "valueQuantity": quantity}]
    return {"url": OVERRIDE_URL, "extension": parts}


def patient_context(patient_ref: str, *, now: datetime, rulesets: Sequence[Ruleset],
                    patient: dict[str, Any] | None = None, careplans: Iterable[dict[str, Any]] = (),
                    goals: Iterable[dict[str, Any]] = (), default_tz: str = "UTC") -> tuple[PatientContext, list[str]]:
    """Build the context for `rulesets` (already filtered to the patient's enrollment)."""
    careplans = list(careplans)
    tz = patient_timezone(patient, default_tz)
    overrides, problems = overrides_from_careplans(careplans, rulesets, now, tz)
    starts = [period_bound((cp.get("period") or {}).get("start"), tz=tz) for cp in careplans
              if careplan_active(cp, now, tz) and any(enrolls(cp, rs.program) for rs in rulesets)]
    since = min((s for s in starts if s is not None), default=None)
    context = PatientContext(patient_ref, tuple(goals), overrides, tz, since)
    return context, problems


def period_bound(text: Any, *, end_of_day: bool = False, tz: tzinfo = UTC) -> datetime | None:
    """A CarePlan period bound as an instant: a bare FHIR date is the whole calendar day in `tz` (its
    midnight, or its last instant for an end); a date-time carries its own offset. None if unreadable."""
    if not isinstance(text, str):
        return None
    if len(text) == 10:  # a FHIR date: the whole calendar day counts, where the patient lives
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return None
        return datetime.combine(day, time(23, 59, 59, 999000) if end_of_day else time(0), tz)
    try:
        return parse_instant(text)
    except ValueError:
        return None
