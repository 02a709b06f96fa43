"""`aggregate: {metric, stat: mean|min|max, op, value, min_readings, min_days, within|days}`: a
statistic of the window's readings against a threshold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from common.patient_time import days_with_readings
from rules.conditions import NOT_HELD, Scope, compare, describe_value, quick
from rules.fastpath import Check, threshold_predicate, window_start_of, window_values
from rules.fields import MetricName, Op, StrictModel, ThresholdSpec, Windowed
from rules.registry import Needs
from rules.results import ConditionResult

STATS: dict[str, Callable[[list[float]], float]] = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}


class AggregateSpec(Windowed):
    metric: MetricName
    stat: Literal["mean", "min", "max"]
    op: Op
    value: ThresholdSpec
    min_readings: int = Field(default=1, ge=1)
    # Distinct calendar days (patient's zone) the readings must come from: a mean of three readings
    # taken one minute apart on one morning is one measurement session, not a week's home BP.
    min_days: int = Field(default=1, ge=1)


class AggregateCond(StrictModel):
    aggregate: AggregateSpec


def evaluate(cond: AggregateCond, scope: Scope) -> ConditionResult:
    spec = cond.aggregate
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
    stat = STATS[spec.stat]([r.value for r in window])
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op)
    held = compare(op, stat, threshold.value)
    if not scope.explain:
        return quick(held)
    used = tuple(window) if spec.stat == "mean" else tuple(r for r in window if r.value == stat)[:1]

    def text() -> str:
        return (f"{spec.stat} of {len(window)} {spec.metric} readings {scope.window_text(spec)} "
                f"{describe_value(stat, spec.metric)} {op} {threshold.describe()}")

    return ConditionResult("aggregate", held, text, used, (threshold,))


def compile(cond: AggregateCond) -> Check:
    spec = cond.aggregate
    metric, stat, need, start = spec.metric, STATS[spec.stat], spec.min_readings, window_start_of(spec)
    pred_for = threshold_predicate(spec, spec.metric)
    min_days = spec.min_days

    def check(scope: Scope) -> bool:
        if min_days > 1:
            window = scope.history.series(metric).between(start(scope), scope.at)
            if len(window) < need or len(days_with_readings((r.effective for r in window), scope.ctx.tz)) < min_days:
                return False
            values = [r.value for r in window]
        else:
            values = window_values(scope, metric, start(scope))
        return len(values) >= need and pred_for(scope)(stat(values))

    return check


def needs(cond: AggregateCond) -> Needs:
    spec = cond.aggregate
    return Needs(metrics=frozenset({spec.metric}), lookback=spec.span(),
                 thresholds=((("aggregate", "value"), spec.value, spec.metric, False),))
