"""Semantics of each condition kind, evaluated as of one point in time (`Scope.at`).

Windows end at `at` and look back by effective time. Thresholds resolve in the order override >
goal > default (or the rule's own value), and each result records where its threshold came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from common.codes import METRICS
from common.patient_time import days_with_readings
from common.units import UnitError
from rules import registry
from rules.enrollment import PatientContext, RuleOverride
from rules.goals import personal_bound
from rules.model import (
    AbsenceSpec,
    AggregateSpec,
    ChangeSpec,
    Comparison,
    ConsecutiveSpec,
    CountSpec,
    GoalBound,
    ParamRef,
    ProSpec,
    Rule,
    Windowed,
)
from rules.pro import INSTRUMENTS
from rules.quantity import Quantity, format_duration, format_value
from rules.readings import Reading
from rules.results import ConditionResult, ResolvedThreshold
from rules.window import History, window_start

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # gap start when a patient never had a reading
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


def _quick(held: bool) -> ConditionResult:
    return HELD if held else NOT_HELD


def _not(condition: Any, scope: Scope) -> ConditionResult:
    inner = evaluate_condition(condition.not_, scope)
    if not scope.explain:
        return _quick(not inner.held)
    return ConditionResult("not", not inner.held, lambda: f"not ({inner.text})", children=(inner,))


def _combine(kind: str, children: Sequence[Any], scope: Scope, *, stop_when: bool) -> ConditionResult:
    """`all` stops at the first child that does not hold, `any` at the first that does."""
    results = []
    held = not stop_when
    for child in children:
        result = evaluate_condition(child, scope)
        results.append(result)
        if result.held is stop_when:
            held = stop_when
            break
    if not scope.explain:
        return _quick(held)
    return ConditionResult(kind, held, lambda: f"{kind} of {len(children)} conditions", children=tuple(results))


def _fmt(value: float, metric: str) -> str:
    return format_value(value, METRICS[metric].unit)


def _reading(spec: Comparison, scope: Scope) -> ConditionResult:
    reading = scope.trigger.get(spec.metric)
    if reading is None:
        return ConditionResult("reading", False, lambda: f"the triggering observation has no {spec.metric}") \
            if scope.explain else NOT_HELD
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op)
    held = compare(op, reading.value, threshold.value)
    if not scope.explain:
        return _quick(held)
    return ConditionResult("reading", held, lambda: f"{spec.metric} {_fmt(reading.value, spec.metric)} {op} "
                           f"{threshold.describe()}", (reading,), (threshold,))


def _count(spec: CountSpec, scope: Scope) -> ConditionResult:
    window = scope.history.series(spec.where.metric).between(scope.start(spec), scope.at)
    threshold, op = scope.threshold(spec.where.value, spec.where.metric, spec.where.op)
    found = matching(op, threshold.value, window) if len(window) >= spec.at_least else []
    held = len(found) >= spec.at_least
    if not scope.explain:
        return _quick(held)

    def text() -> str:
        return (f"{len(found)} of {len(window)} {spec.where.metric} readings {scope.window_text(spec)} were {op} "
                f"{threshold.describe()} (at least {spec.at_least} needed)")

    return ConditionResult("count", held, text, tuple(found) if held else (), (threshold,))


def _change(spec: ChangeSpec, scope: Scope) -> ConditionResult:
    window = scope.history.series(spec.metric).between(scope.start(spec), scope.at)
    if len(window) < 2:
        return ConditionResult("change", False, lambda: f"fewer than 2 {spec.metric} readings "
                               f"{scope.window_text(spec)}") if scope.explain else NOT_HELD
    first, last, delta = _delta(spec.how, window)
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op, difference=True)
    held = compare(op, delta, threshold.value)
    if not scope.explain:
        return _quick(held)

    def text() -> str:
        how = {"first_to_last": "first to last reading", "max_rise": "largest rise", "max_fall": "largest fall"}[
            spec.how
        ]
        return (f"{spec.metric} {how} {scope.window_text(spec)}: {_fmt(delta, spec.metric)} "
                f"({_fmt(first.value, spec.metric)} to {_fmt(last.value, spec.metric)}) {op} {threshold.describe()}")

    return ConditionResult("change", held, text, (first, last), (threshold,))


def _delta(how: str, window: Sequence[Reading]) -> tuple[Reading, Reading, float]:
    if how == "first_to_last":
        return window[0], window[-1], window[-1].value - window[0].value
    sign = 1.0 if how == "max_rise" else -1.0  # a fall is reported as a positive amount
    best: tuple[Reading, Reading, float] | None = None
    extreme = window[0]
    for reading in window[1:]:
        amount = sign * (reading.value - extreme.value)
        if best is None or amount > best[2]:
            best = (extreme, reading, amount)
        if amount < 0:
            extreme = reading
    assert best is not None
    return best


_STATS: dict[str, Callable[[list[float]], float]] = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}


def _aggregate(spec: AggregateSpec, scope: Scope) -> ConditionResult:
    window = scope.history.series(spec.metric).between(scope.start(spec), scope.at)
    if len(window) < spec.min_readings:
        return ConditionResult("aggregate", False, lambda: f"{len(window)} {spec.metric} reading(s) "
                               f"{scope.window_text(spec)}, {spec.min_readings} needed for a {spec.stat}") \
            if scope.explain else NOT_HELD
    days = len(days_with_readings((r.effective for r in window), scope.ctx.tz)) if spec.min_days > 1 else 1
    if days < spec.min_days:
        return ConditionResult("aggregate", False, lambda: f"{spec.metric} readings on {days} day(s) "
                               f"{scope.window_text(spec)}, {spec.min_days} days needed for a {spec.stat}") \
            if scope.explain else NOT_HELD
    stat = _STATS[spec.stat]([r.value for r in window])
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op)
    held = compare(op, stat, threshold.value)
    if not scope.explain:
        return _quick(held)
    used = tuple(window) if spec.stat == "mean" else tuple(r for r in window if r.value == stat)[:1]

    def text() -> str:
        return (f"{spec.stat} of {len(window)} {spec.metric} readings {scope.window_text(spec)} "
                f"{_fmt(stat, spec.metric)} {op} {threshold.describe()}")

    return ConditionResult("aggregate", held, text, used, (threshold,))


def _consecutive(spec: ConsecutiveSpec, scope: Scope) -> ConditionResult:
    start = scope.start(spec)
    last = [r for r in scope.history.series(spec.where.metric).up_to(scope.at, spec.count) if r.effective >= start]
    threshold, op = scope.threshold(spec.where.value, spec.where.metric, spec.where.op)
    held = len(last) == spec.count and len(matching(op, threshold.value, last)) == spec.count
    if not scope.explain:
        return _quick(held)

    def text() -> str:
        shown = ", ".join(_fmt(r.value, spec.where.metric) for r in last)
        return (f"last {spec.count} {spec.where.metric} readings {scope.window_text(spec)} {op} "
                f"{threshold.describe()}: {len(last)} found ({shown})")

    return ConditionResult("consecutive", held, text, tuple(last) if held else (), (threshold,))


def _absence(spec: AbsenceSpec, scope: Scope) -> ConditionResult:
    start = scope.start(spec)
    series = scope.history.series(spec.metric)
    present = series.between(start, scope.at)
    previous = series.last_before(start)
    since = scope.ctx.enrolled_since
    too_new = not present and previous is None and since is not None and since > start
    if not scope.explain:
        return _quick(not present and not too_new)
    if present:
        return ConditionResult("absence", False, lambda: f"{len(present)} {spec.metric} reading(s) "
                               f"{scope.window_text(spec)}")
    if too_new:
        return ConditionResult(
            "absence", False, lambda: f"no {spec.metric} reading yet, enrolled for less than the window"
        )
    gap_start = previous.effective if previous else (since or EPOCH)
    last = "no earlier reading" if previous is None else f"last one {_span(scope.at - previous.effective)} earlier"
    return ConditionResult("absence", True, lambda: f"no {spec.metric} reading {scope.window_text(spec)} ({last})",
                           (previous,) if previous else (), gap_start=gap_start)


def _span(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} day(s) {hours % 24} hour(s)" if hours >= 24 else f"{hours} hour(s)"


def _pro(spec: ProSpec, scope: Scope) -> ConditionResult:
    inst = INSTRUMENTS[spec.instrument]
    reading = scope.trigger.get(spec.metric)
    what = f"{inst.name} item {spec.item}" if spec.item else f"{inst.name} total"
    if reading is None:
        why = "not answered" if spec.item else "not scored (incomplete response)"
        return ConditionResult("pro", False, lambda: f"{what} {why} in the triggering observation") \
            if scope.explain else NOT_HELD
    if spec.band_at_least is not None:
        band = inst.band(reading.value)
        low = dict((name, low) for low, name in inst.bands)[spec.band_at_least]
        held = inst.band_names.index(band) >= inst.band_names.index(spec.band_at_least)
        threshold = ResolvedThreshold("band_at_least", spec.metric, float(low), METRICS[spec.metric].unit, "rule",
                                      f"band {spec.band_at_least} starts at {low}")
        return ConditionResult("pro", held, lambda: f"{what} {reading.value:g} is in band {band}; band at least "
                               f"{spec.band_at_least} (from {low})", (reading,), (threshold,))
    assert spec.op is not None and spec.value is not None
    threshold = ResolvedThreshold("value", spec.metric, spec.value, METRICS[spec.metric].unit, "rule",
                                  f"rule value {spec.value:g}")
    held = compare(spec.op, reading.value, spec.value)
    return ConditionResult("pro", held, lambda: f"{what} {reading.value:g} {spec.op} {spec.value:g}", (reading,),
                           (threshold,))
