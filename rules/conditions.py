"""Semantics of each condition kind, evaluated as of one point in time (`Scope.at`).

Windows end at `at` and look back by effective time. Thresholds resolve in the order override >
goal > default (or the rule's own value), and each result records where its threshold came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from common.codes import METRICS
from common.units import UnitError
from rules import registry
from rules.enrollment import PatientContext, RuleOverride
from rules.fields import GoalBound, ParamRef, Windowed
from rules.goals import personal_bound
from rules.model import Rule
from rules.quantity import Quantity, format_duration, format_value
from rules.readings import Reading
from rules.results import ConditionResult, ResolvedThreshold
from rules.window import History, window_start

_EPS = 1e-9
# With a goal bound, "above high" / "below low" means outside the goal: a strict goal (< 130)
# excludes the bound itself, an inclusive one (range high 129, <= 129) includes it.
_OUTSIDE_GOAL = {("high", ">"): (">=", ">"), ("high", ">="): (">=", ">"),
                 ("low", "<"): ("<=", "<"), ("low", "<="): ("<=", "<")}


def compare(op: str, a: float, b: float) -> bool:
    """`a op b` with a tolerance, so 2 [lb_av] converted to kg equals a 2 lb change."""
    tol = _EPS * max(1.0, abs(b))
    if op == ">":
        return a > b + tol
    if op == ">=":
        return a >= b - tol
    if op == "<":
        return a < b - tol
    if op == "<=":
        return a <= b + tol
    return (abs(a - b) <= tol) == (op == "==")


def matching(op: str, bound: float, readings: Sequence[Reading]) -> list[Reading]:
    """The readings whose value satisfies `value op bound` (same tolerance as `compare`), without a
    function call per reading: windows hold hundreds of readings and this is the hot loop."""
    tol = _EPS * max(1.0, abs(bound))
    if op == ">":
        limit = bound + tol
        return [r for r in readings if r.value > limit]
    if op == ">=":
        limit = bound - tol
        return [r for r in readings if r.value >= limit]
    if op == "<":
        limit = bound - tol
        return [r for r in readings if r.value < limit]
    if op == "<=":
        limit = bound + tol
        return [r for r in readings if r.value <= limit]
    if op == "==":
        return [r for r in readings if abs(r.value - bound) <= tol]
    return [r for r in readings if abs(r.value - bound) > tol]


class Scope:
    """One rule evaluated at one time for one patient."""

    __slots__ = ("rule", "at", "trigger", "history", "ctx", "override", "explain", "_cache", "_notes")

    def __init__(self, rule: Rule, at: datetime, trigger: dict[str, Reading], history: History,
                 ctx: PatientContext, override: RuleOverride | None, *, explain: bool = True) -> None:
        self.rule, self.at, self.trigger, self.history = rule, at, trigger, history
        self.ctx, self.override = ctx, override
        # Without `explain`, results are the shared HELD / NOT_HELD: most evaluations do not fire,
        # and a firing rule is evaluated again with explanations.
        self.explain = explain
        # Keyed by the threshold spec's id: specs belong to rules that outlive the scope.
        self._cache: dict[tuple[int, str, bool], tuple[ResolvedThreshold, str | None]] = {}
        self._notes: list[str] = []

    def use(self, rule: Rule, override: RuleOverride | None) -> Scope:
        """Reuse this scope (same time, patient and data) for another rule."""
        self.rule, self.override, self.explain = rule, override, False
        self._notes = []
        return self

    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._notes))

    def start(self, spec: Windowed) -> datetime:
        return window_start(self.at, within=spec.within, days=spec.days, tz=self.ctx.tz)

    def window_text(self, spec: Windowed) -> str:
        point = "this reading" if self.trigger else "now"
        if spec.within is not None:
            return f"in the {format_duration(spec.within)} up to {point}"
        if spec.days == 0:
            return f"today (patient's time zone) up to {point}"
        return f"since the start of the day {spec.days} day(s) earlier (patient's time zone) up to {point}"

    def threshold(self, spec: Any, metric: str, op: str, *, difference: bool = False) -> tuple[ResolvedThreshold, str]:
        """The resolved threshold and the operator to apply (see _OUTSIDE_GOAL for goal bounds)."""
        if type(spec) is Quantity:
            return _fixed(spec, "value", metric, difference), op
        key = (id(spec), metric, difference)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._resolve(spec, metric, difference)
        resolved, bound = found
        if resolved.source == "goal" and bound is not None and (bound, op) in _OUTSIDE_GOAL:
            strict_op, inclusive_op = _OUTSIDE_GOAL[(bound, op)]
            return resolved, strict_op if resolved.strict else inclusive_op
        return resolved, op

    def _resolve(self, spec: Any, metric: str, difference: bool) -> tuple[ResolvedThreshold, str | None]:
        unit = METRICS[metric].unit
        name = "value"
        if isinstance(spec, ParamRef):
            name = spec.param
            chosen = self.override.params.get(name) if self.override else None
            if chosen is not None:
                try:
                    value = chosen.in_unit(unit, difference=difference)
                    return ResolvedThreshold(
                        name, metric, value, unit, "override", f"per-patient override {chosen}"
                    ), None
                except UnitError:
                    self._notes.append(
                        f"Per-patient override of {name} ignored: {chosen} is not comparable with {metric}."
                    )
            spec = self.rule.params[name]
        if isinstance(spec, Quantity):
            return _fixed(spec, name, metric, difference), None
        assert isinstance(spec, GoalBound)
        bound = personal_bound(self.ctx.goals, spec.goal, spec.bound)
        if bound is not None:
            return ResolvedThreshold(name, metric, bound.value, unit, "goal", bound.detail, bound.goal_ref,
                                     bound.strict), spec.bound
        detail = f"default {spec.default}, no usable active goal for {spec.goal} ({spec.bound} bound)"
        return ResolvedThreshold(name, metric, spec.default.in_unit(unit), unit, "default", detail), spec.bound


_FIXED: dict[tuple[int, str, str, bool], tuple[Quantity, ResolvedThreshold]] = {}


def _fixed(spec: Quantity, name: str, metric: str, difference: bool) -> ResolvedThreshold:
    """A rule's own value: the same for every patient, so resolved once. Keyed by identity, with the
    Quantity kept in the entry so its id cannot be reused by another object while cached."""
    key = (id(spec), name, metric, difference)
    found = _FIXED.get(key)
    if found is None or found[0] is not spec:
        if len(_FIXED) > 10_000:
            _FIXED.clear()
        unit = METRICS[metric].unit
        value = spec.in_unit(unit, difference=difference)
        found = _FIXED[key] = (spec, ResolvedThreshold(name, metric, value, unit, "rule", f"rule value {spec}"))
    return found[1]


HELD = ConditionResult("check", True, lambda: "held")
NOT_HELD = ConditionResult("check", False, lambda: "did not hold")


def evaluate_condition(condition: Any, scope: Scope) -> ConditionResult:
    result: ConditionResult = registry.of(condition).evaluate(condition, scope)
    return result


def quick(held: bool) -> ConditionResult:
    """The shared result of an evaluation without explanations (see `Scope.explain`)."""
    return HELD if held else NOT_HELD


def describe_value(value: float, metric: str) -> str:
    """A value of `metric` with its canonical unit, as explanations show it."""
    return format_value(value, METRICS[metric].unit)
