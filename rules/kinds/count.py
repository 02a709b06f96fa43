"""`count: {where: <comparison>, at_least: N, within|days}`: at least N readings in the window satisfy
the comparison."""

from __future__ import annotations

from pydantic import Field

from rules.conditions import Scope, matching, quick
from rules.fastpath import Check, threshold_predicate, window_start_of, window_values
from rules.fields import Comparison, StrictModel, Windowed
from rules.registry import Needs
from rules.results import ConditionResult


class CountSpec(Windowed):
    where: Comparison
    at_least: int = Field(ge=1)


class CountCond(StrictModel):
    count: CountSpec


def evaluate(cond: CountCond, scope: Scope) -> ConditionResult:
    spec = cond.count
    window = scope.history.series(spec.where.metric).between(scope.start(spec), scope.at)
    threshold, op = scope.threshold(spec.where.value, spec.where.metric, spec.where.op)
    found = matching(op, threshold.value, window) if len(window) >= spec.at_least else []
    held = len(found) >= spec.at_least
    if not scope.explain:
        return quick(held)

    def text() -> str:
        return (f"{len(found)} of {len(window)} {spec.where.metric} readings {scope.window_text(spec)} were {op} "
                f"{threshold.describe()} (at least {spec.at_least} needed)")

    return ConditionResult("count", held, text, tuple(found) if held else (), (threshold,))


def compile(cond: CountCond) -> Check:
    spec = cond.count
    metric, need, start = spec.where.metric, spec.at_least, window_start_of(spec)
    pred_for = threshold_predicate(spec.where, spec.where.metric)

    def check(scope: Scope) -> bool:
        values = window_values(scope, metric, start(scope))
        return len(values) >= need and sum(map(pred_for(scope), values)) >= need

    return check


def needs(cond: CountCond) -> Needs:
    spec = cond.count
    return Needs(metrics=frozenset({spec.where.metric}), lookback=spec.span(),
                 thresholds=((("count", "where", "value"), spec.where.value, spec.where.metric, False),))
