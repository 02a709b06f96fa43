"""`change: {metric, how, op, value, within|days}`: how much a metric moved in the window (first to
last reading, largest rise or largest fall), compared with a difference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rules.conditions import NOT_HELD, Scope, compare, describe_value, quick
from rules.fastpath import Check, threshold_predicate, window_start_of
from rules.fields import MetricName, Op, StrictModel, ThresholdSpec, Windowed
from rules.readings import Reading
from rules.registry import Needs
from rules.results import ConditionResult

_HOW_TEXT = {"first_to_last": "first to last reading", "max_rise": "largest rise", "max_fall": "largest fall"}


class ChangeSpec(Windowed):
    metric: MetricName
    how: Literal["first_to_last", "max_rise", "max_fall"] = "first_to_last"
    op: Op
    value: ThresholdSpec


class ChangeCond(StrictModel):
    change: ChangeSpec


def delta(how: str, window: Sequence[Reading]) -> tuple[Reading, Reading, float]:
    """(from, to, amount) of the change `how` over a window of at least two readings."""
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


def evaluate(cond: ChangeCond, scope: Scope) -> ConditionResult:
    spec = cond.change
    window = scope.history.series(spec.metric).between(scope.start(spec), scope.at)
    if len(window) < 2:
        return ConditionResult("change", False, lambda: f"fewer than 2 {spec.metric} readings "
                               f"{scope.window_text(spec)}") if scope.explain else NOT_HELD
    first, last, amount = delta(spec.how, window)
    threshold, op = scope.threshold(spec.value, spec.metric, spec.op, difference=True)
    held = compare(op, amount, threshold.value)
    if not scope.explain:
        return quick(held)

    def text() -> str:
        shown = describe_value
        return (f"{spec.metric} {_HOW_TEXT[spec.how]} {scope.window_text(spec)}: {shown(amount, spec.metric)} "
                f"({shown(first.value, spec.metric)} to {shown(last.value, spec.metric)}) {op} "
                f"{threshold.describe()}")

    return ConditionResult("change", held, text, (first, last), (threshold,))


def compile(cond: ChangeCond) -> Check:
    spec = cond.change
    metric, how, start = spec.metric, spec.how, window_start_of(spec)
    pred_for = threshold_predicate(spec, metric, difference=True)

    def check(scope: Scope) -> bool:
        window = scope.history.series(metric).between(start(scope), scope.at)
        return len(window) >= 2 and pred_for(scope)(delta(how, window)[2])

    return check


def needs(cond: ChangeCond) -> Needs:
    spec = cond.change
    return Needs(metrics=frozenset({spec.metric}), lookback=spec.span(),
                 thresholds=((("change", "value"), spec.value, spec.metric, True),))
