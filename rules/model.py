"""The rule language: rulesets, rules, conditions, thresholds, suppression and actions (pydantic).

Conditions are data, not code: each is a mapping with exactly one key naming its kind (`reading`,
`count`, `change`, `aggregate`, `consecutive`, `absence`, `pro`, `all`, `any`, `not`). The models
check everything that can be checked without a patient: metric names, units against each metric's
canonical unit, windows, parameter references and PRO items. Errors carry the offending field in
their context so `rules.loader` can name the YAML line. docs/rules.md is the user guide.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from common.codes import METRICS
from rules import registry
from rules.pro import INSTRUMENTS
from rules.quantity import Quantity, check_unit, format_duration, parse_duration

OPS = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES = ("low", "moderate", "high")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["low", "moderate", "high"]
PRIORITIES = ("routine", "urgent", "asap", "stat")  # FHIR request-priority, lowest first
Priority = Literal["routine", "urgent", "asap", "stat"]
# Severity decides the default Task priority; a rule (or a tier) may ask for more (docs/rules.md §5).
DEFAULT_PRIORITY = {"high": "urgent", "moderate": "routine", "low": "routine"}
# Priorities whose patient message cannot wait for the end of quiet hours ("treat a low now").
PATIENT_NOW = frozenset({"asap", "stat"})
_COMPARISON = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=|==|!=|>|<)\s*(\S.*?)\s*$")
_RULE_ID = r"^[a-z0-9][a-z0-9-]{0,63}$"


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error about `field` (a dotted path relative to the model that raises it)."""
    return PydanticCustomError("vigil_field", "{message}", {"field": field, "message": message})


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_metric(name: str) -> str:
    if name not in METRICS:
        valid = sorted(METRICS)
        raise ValueError(f"unknown metric {name!r}; {_suggest(name, valid)}valid metrics: {', '.join(valid)}")
    return name


def _duration(value: object) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


MetricName = Annotated[str, AfterValidator(_check_metric)]
QuantityValue = Annotated[Quantity, PlainValidator(Quantity.parse), PlainSerializer(str)]
Duration = Annotated[timedelta, PlainValidator(_duration), PlainSerializer(format_duration)]


class StrictModel(BaseModel):
    """Unknown keys are errors that list the valid ones (a typo must not silently drop a bound).

    They are collected into `unknown_fields_` first, so the other fields are still validated and
    one load reports every problem of the mapping.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    unknown_fields_: tuple[str, ...] = Field(default=(), exclude=True, repr=False)

    @classmethod
    def valid_fields(cls) -> list[str]:
        return sorted(f.alias or name for name, f in cls.model_fields.items() if name != "unknown_fields_")

    @model_validator(mode="before")
    @classmethod
    def _collect_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = cls.valid_fields()
            unknown = tuple(str(k) for k in data if k not in valid)
            if unknown:
                data = {k: v for k, v in data.items() if k in valid} | {"unknown_fields_": unknown}
        return data

    @field_validator("unknown_fields_")
    @classmethod
    def _reject_unknown(cls, unknown: tuple[str, ...]) -> tuple[str, ...]:
        if unknown:
            valid = cls.valid_fields()
            raise PydanticCustomError(
                "unknown_field", "unknown field '{field}'; {hint}valid fields here: {valid}",
                {"field": unknown[0], "hint": _suggest(unknown[0], valid), "valid": ", ".join(valid)},
            )
        return unknown


# --- thresholds -------------------------------------------------------------------------------

class GoalBound(StrictModel):
    """A personal bound from the patient's active Goal, with the default used when there is none."""

    goal: MetricName
    bound: Literal["high", "low"]
    default: QuantityValue


class ParamRef(StrictModel):
    """A named rule parameter; per-patient overrides change parameters by name."""

    param: str


# Tag names must not equal any YAML key: the loader walks error locations through the data and
# skips the segments (tags) that are not keys.
def _value_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "goal-bound" if "goal" in value else "param-ref" if "param" in value else None
    tags: dict[type, str] = {GoalBound: "goal-bound", ParamRef: "param-ref"}
    return tags.get(type(value), "fixed-quantity")


ThresholdSpec = Annotated[
    Union[Annotated[QuantityValue, Tag("fixed-quantity")], Annotated[GoalBound, Tag("goal-bound")],  # noqa: UP007
          Annotated[ParamRef, Tag("param-ref")]],
    Discriminator(_value_tag, custom_error_type="invalid_threshold",
                  custom_error_message="a threshold is a number, a quantity such as '2 [lb_av]', "
                  "{goal: <metric>, bound: high|low, default: <quantity>} or {param: <name>}"),
]


class Comparison(StrictModel):
    """`metric op value`, written as a mapping or as one string: `systolic_bp >= 180`."""

    metric: MetricName
    op: Op
    value: ThresholdSpec

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            match = _COMPARISON.match(data)
            if not match:
                raise PydanticCustomError(
                    "invalid_comparison", "'{text}' is not a comparison; write '<metric> <op> <value>' with op one "
                    "of {ops}, e.g. 'systolic_bp >= 180'", {"text": data, "ops": " ".join(OPS)})
            return {"metric": match.group(1), "op": match.group(2), "value": match.group(3)}
        return data


class Windowed(StrictModel):
    within: Duration | None = None
    days: int | None = Field(default=None, ge=0, le=366)

    @model_validator(mode="after")
    def _one_window(self) -> Windowed:
        if (self.within is None) == (self.days is None):
            raise field_error("within", "give exactly one window: `within` (rolling, e.g. 24h, 7d) or `days` "
                              "(calendar days in the patient's time zone: 0 = today, 1 = since yesterday began)")
        return self

    def window_text(self) -> str:
        if self.within is not None:
            return f"the {format_duration(self.within)} up to"
        return "today up to" if self.days == 0 else f"the calendar days since {self.days} day(s) before,"

    def span(self) -> timedelta:
        return self.within if self.within is not None else timedelta(days=(self.days or 0) + 1)


# --- conditions -------------------------------------------------------------------------------

class CountSpec(Windowed):
    where: Comparison
    at_least: int = Field(ge=1)


class ChangeSpec(Windowed):
    metric: MetricName
    how: Literal["first_to_last", "max_rise", "max_fall"] = "first_to_last"
    op: Op
    value: ThresholdSpec


class AggregateSpec(Windowed):
    metric: MetricName
    stat: Literal["mean", "min", "max"]
    op: Op
    value: ThresholdSpec
    min_readings: int = Field(default=1, ge=1)
    # Distinct calendar days (patient's zone) the readings must come from: a mean of three readings
    # taken one minute apart on one morning is one measurement session, not a week's home BP.
    min_days: int = Field(default=1, ge=1)


class ConsecutiveSpec(Windowed):
    where: Comparison
    count: int = Field(ge=2)


class AbsenceSpec(Windowed):
    """No reading of `metric` for a period. The period is a gap length, never calendar days:
    `days: N` means N x 24 h since the last reading, the same as `within: Nd` (docs/rules.md,
    "Windows"). Read as calendar days it would open up to a day late (local midnight N days back)."""

    metric: MetricName

    @model_validator(mode="before")
    @classmethod
    def _gap_length(cls, data: Any) -> Any:
        if isinstance(data, dict) and "days" in data and "within" not in data:
            days = data["days"]
            if isinstance(days, int) and not isinstance(days, bool):
                if days < 1:
                    raise field_error("days", "an absence needs a gap of at least 1 day (or `within`, e.g. 12h)")
                return {k: v for k, v in data.items() if k != "days"} | {"within": timedelta(days=days)}
        return data


class ProSpec(StrictModel):
    instrument: Literal["phq9", "phq2", "gad7"]
    item: int | None = Field(default=None, ge=1)
    op: Op | None = None
    value: float | None = None
    band_at_least: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> ProSpec:
        inst = INSTRUMENTS[self.instrument]
        if self.band_at_least is not None:
            if self.item is not None or self.op is not None:
                raise field_error("band_at_least", "use either band_at_least or op/value, not both")
            if self.band_at_least not in inst.band_names:
                raise field_error("band_at_least", f"unknown {inst.name} band {self.band_at_least!r}; "
                                  f"valid: {', '.join(inst.band_names)}")
        elif self.op is None or self.value is None:
            raise field_error("op", "give op and value (on the total, or on `item`), or band_at_least")
        if self.item is not None and self.item > len(inst.item_metrics):
            detail = (f"{inst.name} has {len(inst.item_metrics)} scored items" if inst.item_metrics
                      else f"{inst.name} item answers are not kept as readings; use instrument phq9")
            raise field_error("item", detail)
        return self

    @property
    def metric(self) -> str:
        return f"{self.instrument}_item{self.item}" if self.item else f"{self.instrument}_total"


class ReadingCond(StrictModel):
    reading: Comparison


class CountCond(StrictModel):
    count: CountSpec


class ChangeCond(StrictModel):
    change: ChangeSpec


class AggregateCond(StrictModel):
    aggregate: AggregateSpec


class ConsecutiveCond(StrictModel):
    consecutive: ConsecutiveSpec


class AbsenceCond(StrictModel):
    absence: AbsenceSpec


class ProCond(StrictModel):
    pro: ProSpec


class AllCond(StrictModel):
    all: list[Condition] = Field(min_length=1)


class AnyCond(StrictModel):
    any: list[Condition] = Field(min_length=1)


class NotCond(StrictModel):
    not_: Condition = Field(alias="not")


def _invalid(data: Any) -> PydanticCustomError:
    """A malformed condition: one error that says what was found and lists the valid kinds."""
    found = (f"keys {', '.join(map(str, data))}" if isinstance(data, dict) and data
             else f"a {type(data).__name__} {data!r}"[:120])
    return PydanticCustomError(
        "invalid_condition", "a condition is a mapping with exactly one key, one of: {kinds}; found {found}",
        {"kinds": ", ".join(registry.names()), "found": found})


def _validate_condition(value: Any) -> Any:
    """Validate a condition through the registry (so a kind registered later is known). The kind's
    own errors travel as one `vigil_nested` error whose context carries them with their locations
    relative to the condition; `rules.loader` expands them into line-accurate problems."""
    if isinstance(value, BaseModel):
        if registry.of_model(type(value)) is None:
            raise _invalid(value)
        return value
    kind = registry.named(next(iter(value))) if isinstance(value, dict) and len(value) == 1 else None
    if kind is None:
        raise _invalid(value)
    try:
        return kind.model.model_validate(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise PydanticCustomError("vigil_nested", "{summary}", {"summary": summary, "errors": errors}) from None


# A condition is any registered kind's model (`rules.registry`, built-ins in `rules.kinds`).
Condition = Annotated[Any, PlainValidator(_validate_condition)]
AllCond.model_rebuild()
AnyCond.model_rebuild()
NotCond.model_rebuild()


def kind_of(condition: BaseModel) -> str:
    return registry.of(condition).name


def iter_conditions(condition: BaseModel, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], BaseModel]]:
    """Every condition in the tree with its path (as in the YAML) from `path`."""
    yield path, condition
    kind = kind_of(condition)
    if kind in ("all", "any"):
        for i, child in enumerate(getattr(condition, kind)):
            yield from iter_conditions(child, (*path, kind, i))
    elif kind == "not":
        yield from iter_conditions(condition.not_, (*path, "not"))  # type: ignore[attr-defined]


# --- rules and rulesets -----------------------------------------------------------------------

class Suppression(StrictModel):
    cooldown: Duration = timedelta(hours=24)  # no re-notification sooner, unless the severity got worse
    resolve_after: Duration = timedelta(hours=72)  # close once the rule has not held for this long


class Actions(StrictModel):
    notify: list[Literal["patient", "care-team"]] = ["care-team"]
    escalate: str | None = None  # name of an escalation chain (notifications)
    task: bool | None = None  # care-team Task; default: for moderate and high severity
    flag: bool = False  # a Flag for a lasting state
    priority: Priority | None = None


class SeverityTier(StrictModel):
    severity: Severity
    when: Condition
    priority: Priority | None = None  # this tier's routing priority, when it is above the rule's


class Rule(StrictModel):
    id: str = Field(pattern=_RULE_ID)
    title: str = Field(min_length=1)
    description: str = ""
    severity: Severity
    more_severe: list[SeverityTier] = []
    when: Condition
    triggers: list[MetricName] | None = None
    params: dict[str, ThresholdSpec] = {}
    suppression: Suppression = Suppression()
    actions: Actions = Actions()
    enabled: bool = True
    source: str | None = None

    _trigger_metrics: frozenset[str] = PrivateAttr(default=frozenset())
    _has_absence: bool = PrivateAttr(default=False)
    _horizon: timedelta = PrivateAttr(default=timedelta(0))
    _param_uses: dict[str, set[tuple[str, bool]]] = PrivateAttr(default_factory=dict)
    _metrics: set[str] = PrivateAttr(default_factory=set)
    _absence_metrics: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _compile(self) -> Rule:
        used: set[str] = set()
        conditions: list[tuple[tuple[str | int, ...], Condition]] = [(("when",), self.when)]
        for i, tier in enumerate(self.more_severe):
            if SEVERITY_RANK[tier.severity] <= SEVERITY_RANK[self.severity]:
                raise field_error(f"more_severe.{i}.severity", f"must be more severe than the rule's {self.severity!r}")
            conditions.append((("more_severe", i, "when"), tier.when))
        for base, root in conditions:
            for path, cond in iter_conditions(root, base):
                self._check(path, cond, used)
        if self.triggers is not None:
            used = set(self.triggers)
        elif not used and not self._has_absence:
            raise field_error("when", "the rule reads no metric, so nothing can trigger it")
        self._trigger_metrics = frozenset(used)
        return self

    def _check(self, path: tuple[Any, ...], cond: BaseModel, used: set[str]) -> None:
        kind = kind_of(cond)
        if kind in ("all", "any", "not"):
            return
        entry = registry.of(cond)
        if entry.needs is not None:
            metrics, horizon = entry.needs(cond)
            used |= metrics
            self._metrics |= metrics
            self._horizon = max(self._horizon, horizon)
            return
        spec = getattr(cond, kind)
        where = ".".join(map(str, (*path, kind)))
        if isinstance(spec, Windowed):
            self._horizon = max(self._horizon, spec.span())
        if kind == "absence":
            self._has_absence = True
            self._metrics.add(spec.metric)
            self._absence_metrics.add(spec.metric)
            return
        if kind == "pro":
            used.add(spec.metric)
            self._metrics.add(spec.metric)
            return
        comparison = spec
        if kind in ("count", "consecutive"):
            comparison, where = spec.where, f"{where}.where"
        used.add(comparison.metric)
        self._metrics.add(comparison.metric)
        self._check_threshold(f"{where}.value", comparison.value, comparison.metric, difference=kind == "change")

    def _check_threshold(self, where: str, spec: Any, metric: str, *, difference: bool) -> None:
        if isinstance(spec, ParamRef):
            if spec.param not in self.params:
                known = ", ".join(sorted(self.params)) or "none defined"
                raise field_error(where, f"unknown param {spec.param!r}; params of this rule: {known}")
            self._param_uses.setdefault(spec.param, set()).add((metric, difference))
            spec = self.params[spec.param]
        quantities = [spec] if isinstance(spec, Quantity) else [spec.default]
        if isinstance(spec, GoalBound):
            if METRICS[spec.goal].unit != METRICS[metric].unit:
                raise field_error(where, f"goal metric {spec.goal} ({METRICS[spec.goal].unit}) cannot bound {metric} "
                                  f"({METRICS[metric].unit})")
            if difference:
                raise field_error(where, "a change is compared with a difference, not with a goal bound")
        for quantity in quantities:
            try:
                check_unit(quantity, metric)
            except ValueError as exc:
                raise field_error(where, str(exc)) from None

    @property
    def trigger_metrics(self) -> frozenset[str]:
        """Metrics whose new readings evaluate this rule (absence rules are swept by the timer)."""
        return self._trigger_metrics

    @property
    def metrics(self) -> frozenset[str]:
        """Every metric the rule reads (the handler loads these)."""
        return frozenset(self._metrics)

    @property
    def absence_metrics(self) -> frozenset[str]:
        """The metrics whose absence the rule watches (a reading of one of them ends a gap)."""
        return frozenset(self._absence_metrics)

    def param_uses(self, name: str) -> frozenset[tuple[str, bool]]:
        """(metric, is_difference) for every condition that compares with param `name`."""
        return frozenset(self._param_uses.get(name, ()))

    @property
    def has_absence(self) -> bool:
        return self._has_absence

    @property
    def horizon(self) -> timedelta:
        """The longest window: how far a late reading can still change this rule's outcome."""
        return self._horizon

    def priority_for(self, severity: str) -> str:
        """The routing priority of an alert of this rule at `severity`: the highest of the severity's
        default, the rule's `actions.priority` and the matching tier's `priority`."""
        wanted = [DEFAULT_PRIORITY[severity], *([self.actions.priority] if self.actions.priority else [])]
        wanted += [t.priority for t in self.more_severe if t.severity == severity and t.priority]
        return max(wanted, key=PRIORITIES.index)

    def patient_message_now(self, severity: str) -> bool:
        """Whether the patient's message for an alert at `severity` goes out in quiet hours too:
        high severity, or a priority (asap, stat) whose instruction cannot wait."""
        return severity == "high" or self.priority_for(severity) in PATIENT_NOW

    @property
    def wants_task(self) -> bool:
        return self.actions.task if self.actions.task is not None else self.severity in ("moderate", "high")


class Program(StrictModel):
    """How a CarePlan names the program: `instantiatesCanonical` URLs or category codes."""

    id: str = Field(pattern=_RULE_ID)
    title: str | None = None
    canonical: list[str] = []
    category: list[str] = []  # "code" or "system|code"

    @model_validator(mode="after")
    def _named(self) -> Program:
        if not self.canonical and not self.category:
            raise field_error("canonical", "give `canonical` and/or `category` so CarePlans can enroll patients")
        return self


class Ruleset(StrictModel):
    ruleset: str = Field(pattern=_RULE_ID)
    title: str = Field(min_length=1)
    version: str = "1"
    program: Program
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _version_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("version"), int | float):
            return {**data, "version": str(data["version"])}
        return data

    @model_validator(mode="after")
    def _unique_ids(self) -> Ruleset:
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.id in seen:
                raise field_error(f"rules.{i}.id", f"rule id {rule.id!r} is used twice in this ruleset")
            seen.add(rule.id)
        return self

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)
