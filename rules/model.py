"""The rule language: rulesets, rules, conditions, suppression and actions (pydantic).

Conditions are data, not code: each is a mapping with exactly one key naming its kind, one of the
kinds registered in `rules.registry` (the built-ins, `reading`, `count`, `change`, `aggregate`,
`consecutive`, `absence`, `pro`, `all`, `any`, `not`, are modules of `rules.kinds`). The models
check everything that can be checked without a patient: metric names, units against each metric's
canonical unit, windows, parameter references and PRO items (`rules.fields` holds the building
blocks). Errors carry the offending field in their context so `rules.loader` can name the YAML
line. docs/rules.md is the user guide.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainValidator, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from common.codes import METRICS
from rules import registry
from rules.fields import Duration, GoalBound, MetricName, ParamRef, StrictModel, ThresholdSpec, field_error
from rules.quantity import Quantity, check_unit

SEVERITIES = ("low", "moderate", "high")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
Severity = Literal["low", "moderate", "high"]
PRIORITIES = ("routine", "urgent", "asap", "stat")  # FHIR request-priority, lowest first
Priority = Literal["routine", "urgent", "asap", "stat"]
# Severity decides the default Task priority; a rule (or a tier) may ask for more (docs/rules.md §5).
DEFAULT_PRIORITY = {"high": "urgent", "moderate": "routine", "low": "routine"}
# Priorities whose patient message cannot wait for the end of quiet hours ("treat a low now").
PATIENT_NOW = frozenset({"asap", "stat"})
_RULE_ID = r"^[a-z0-9][a-z0-9-]{0,63}$"


# --- conditions: any registered kind (rules.registry; the built-ins are rules.kinds.*) ----------

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


def kind_of(condition: BaseModel) -> str:
    return registry.of(condition).name


def iter_conditions(condition: BaseModel, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], BaseModel]]:
    """Every condition in the tree with its path (as in the YAML) from `path`."""
    yield path, condition
    for below, child in registry.children_of(condition):
        yield from iter_conditions(child, (*path, *below))


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
        needs = registry.needs_of(cond)
        if needs is None:
            return
        used |= needs.metrics
        self._metrics |= needs.metrics | needs.absent
        self._absence_metrics |= needs.absent
        self._has_absence = self._has_absence or bool(needs.absent)
        self._horizon = max(self._horizon, needs.lookback)
        for below, spec, metric, difference in needs.thresholds:
            self._check_threshold(".".join(map(str, (*path, *below))), spec, metric, difference=difference)

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
