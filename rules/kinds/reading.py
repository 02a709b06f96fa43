"""`reading: systolic_bp >= 180`: the triggering Observation's value of a metric against a threshold."""

from __future__ import annotations

from rules.conditions import NOT_HELD, Scope, compare, describe_value, quick
from rules.fastpath import Check, threshold_predicate
from rules.fields import Comparison, StrictModel
from rules.registry import Needs
from rules.results import ConditionResult


class ReadingCond(StrictModel):
    reading: Comparison


def evaluate(cond: ReadingCond, scope: Scope) -> ConditionResult:
    spec = cond.reading
    reading = scope.trigger.get(spec.metric)
    if reading is None:
        return ConditionResult("reading", False, lambda: f"the triggering observation has no {spec.metric}") \
            if scope.explain else NOT_HELD
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op)
    held = compare(op, reading.value, threshold.value)
    if not scope.explain:
        return quick(held)
    return ConditionResult("reading", held, lambda: f"{spec.metric} {describe_value(reading.value, spec.metric)} "
                           f"{op} {threshold.describe()}", (reading,), (threshold,))


def compile(cond: ReadingCond) -> Check:
    spec = cond.reading
    metric, pred_for = spec.metric, threshold_predicate(spec, spec.metric)

    def check(scope: Scope) -> bool:
        reading = scope.trigger.get(metric)
        return reading is not None and pred_for(scope)(reading.value)

    return check


def needs(cond: ReadingCond) -> Needs:
    spec = cond.reading
    return Needs(metrics=frozenset({spec.metric}), thresholds=((("reading", "value"), spec.value, spec.metric, False),))
