"""`consecutive: {where: <comparison>, count: N, within|days}`: the last N readings, all in the
window, all satisfy the comparison."""

from __future__ import annotations

from pydantic import Field

from rules.conditions import Scope, describe_value, matching, quick
from rules.fastpath import Check, threshold_predicate, window_start_of
from rules.fields import Comparison, StrictModel, Windowed
from rules.registry import Needs
from rules.results import ConditionResult


class ConsecutiveSpec(Windowed):
    where: Comparison
    count: int = Field(ge=2)


class ConsecutiveCond(StrictModel):
    consecutive: ConsecutiveSpec


def evaluate(cond: ConsecutiveCond, scope: Scope) -> ConditionResult:
    spec = cond.consecutive
    start = scope.start(spec)
    last = [r for r in scope.history.series(spec.where.metric).up_to(scope.at, spec.count) if r.effective >= start]
    threshold, op = scope.threshold(spec.where.value, spec.where.metric, spec.where.op)
    held = len(last) == spec.count and len(matching(op, threshold.value, last)) == spec.count
    if not scope.explain:
        return quick(held)

    def text() -> str:
        shown = ", ".join(describe_value(r.value, spec.where.metric) for r in last)
        return (f"last {spec.count} {spec.where.metric} readings {scope.window_text(spec)} {op} "
                f"{threshold.describe()}: {len(last)} found ({shown})")

    return ConditionResult("consecutive", held, text, tuple(last) if held else (), (threshold,))


def compile(cond: ConsecutiveCond) -> Check:
    spec = cond.consecutive
    metric, count, start = spec.where.metric, spec.count, window_start_of(spec)
    pred_for = threshold_predicate(spec.where, spec.where.metric)

    def check(scope: Scope) -> bool:
        last = scope.history.series(metric).up_to(scope.at, count)
        if len(last) < count or last[0].effective < start(scope):
            return False
        return all(map(pred_for(scope), [r.value for r in last]))

    return check


def needs(cond: ConsecutiveCond) -> Needs:
    spec = cond.consecutive
    return Needs(metrics=frozenset({spec.where.metric}), lookback=spec.span(),
                 thresholds=((("consecutive", "where", "value"), spec.where.value, spec.where.metric, False),))
