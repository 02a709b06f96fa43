"""A compiled yes/no check per rule: the hot path of evaluation.

Most evaluations do not fire, and they only need to know that. A rule's condition tree is compiled
once into closures with its fixed thresholds already in canonical units, comparing through C-level
`operator` partials over plain float lists. Only a rule that holds is evaluated again by
`rules.conditions`, which explains the result. Both paths share `window_start`, threshold
resolution and the comparison tolerance; tests check they agree.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from common.codes import METRICS
from common.patient_time import days_with_readings
from rules import registry
from rules.conditions import _EPS, Scope, _delta
from rules.model import (
    AbsenceCond,
    AggregateCond,
    ChangeCond,
    Comparison,
    ConsecutiveCond,
    CountCond,
    NotCond,
    ProCond,
    ReadingCond,
    Rule,
    Windowed,
)
from rules.pro import INSTRUMENTS
from rules.quantity import Quantity
from rules.window import window_start

Check = Callable[[Scope], bool]
Predicate = Callable[[float], bool]
_COMPILED: dict[int, tuple[Rule, Check, tuple[Check, ...]]] = {}


def predicate(op: str, bound: float) -> Predicate:
    """`lambda v: v op bound` with the tolerance of `conditions.compare`, as a C-level partial."""
    tol = _EPS * max(1.0, abs(bound))
    if op == ">":
        return partial(operator.lt, bound + tol)
    if op == ">=":
        return partial(operator.le, bound - tol)
    if op == "<":
        return partial(operator.gt, bound - tol)
    if op == "<=":
        return partial(operator.ge, bound + tol)
    if op == "==":
        return lambda v: abs(v - bound) <= tol
    return lambda v: abs(v - bound) > tol


def compiled(rule: Rule) -> tuple[Check, tuple[Check, ...]]:
    """The rule's check and its more_severe checks (cached; the rule is kept alive with them)."""
    found = _COMPILED.get(id(rule))
    if found is None or found[0] is not rule:
        if len(_COMPILED) > 10_000:
            _COMPILED.clear()
        found = _COMPILED[id(rule)] = (
            rule,
            compile_check(rule.when),
            tuple(compile_check(t.when) for t in rule.more_severe),
        )
    return found[1], found[2]


def compile_check(condition: Any) -> Check:
    kind = registry.of(condition)
    if kind.compile is not None:
        return kind.compile(condition)
    evaluate = kind.evaluate
    # A kind without a compiler is checked by its explaining evaluator.
    return lambda scope: bool(evaluate(condition, scope).held)


def _threshold(comparison: Any, metric: str, *, difference: bool = False) -> Callable[[Scope], Predicate]:
    """Fixed thresholds become one predicate now; goal/param thresholds resolve per patient."""
    spec, op = comparison.value, comparison.op
    if type(spec) is Quantity:
        fixed = predicate(op, spec.in_unit(METRICS[metric].unit, difference=difference))
        return lambda scope: fixed

    def resolve(scope: Scope) -> Predicate:
        threshold, effective_op = scope.threshold(spec, metric, op, difference=difference)
        return predicate(effective_op, threshold.value)

    return resolve


def _start(spec: Windowed) -> Callable[[Scope], datetime]:
    if spec.within is not None:
        within = spec.within
        return lambda scope: scope.at - within
    days = spec.days
    return lambda scope: window_start(scope.at, within=None, days=days, tz=scope.ctx.tz)


def _values(scope: Scope, metric: str, start: datetime) -> list[float]:
    return [r.value for r in scope.history.series(metric).between(start, scope.at)]


def _reading(cond: ReadingCond) -> Check:
    spec: Comparison = cond.reading
    metric, pred_for = spec.metric, _threshold(spec, spec.metric)

    def check(scope: Scope) -> bool:
        reading = scope.trigger.get(metric)
        return reading is not None and pred_for(scope)(reading.value)

    return check


def _count(cond: CountCond) -> Check:
    spec = cond.count
    metric, need, start, pred_for = (
        spec.where.metric,
        spec.at_least,
        _start(spec),
        _threshold(spec.where, spec.where.metric),
    )

    def check(scope: Scope) -> bool:
        values = _values(scope, metric, start(scope))
        return len(values) >= need and sum(map(pred_for(scope), values)) >= need

    return check


def _change(cond: ChangeCond) -> Check:
    spec = cond.change
    metric, how, start = spec.metric, spec.how, _start(spec)
    pred_for = _threshold(spec, metric, difference=True)

    def check(scope: Scope) -> bool:
        window = scope.history.series(metric).between(start(scope), scope.at)
        return len(window) >= 2 and pred_for(scope)(_delta(how, window)[2])

    return check


_STATS: dict[str, Callable[[list[float]], float]] = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}


def _aggregate(cond: AggregateCond) -> Check:
    spec = cond.aggregate
    metric, stat, need, start, pred_for = spec.metric, _STATS[spec.stat], spec.min_readings, _start(spec), \
        _threshold(spec, spec.metric)

    min_days = spec.min_days

    def check(scope: Scope) -> bool:
        if min_days > 1:
            window = scope.history.series(metric).between(start(scope), scope.at)
            if len(window) < need or len(days_with_readings((r.effective for r in window), scope.ctx.tz)) < min_days:
                return False
            values = [r.value for r in window]
        else:
            values = _values(scope, metric, start(scope))
        return len(values) >= need and pred_for(scope)(stat(values))

    return check


def _consecutive(cond: ConsecutiveCond) -> Check:
    spec = cond.consecutive
    metric, count, start, pred_for = (
        spec.where.metric,
        spec.count,
        _start(spec),
        _threshold(spec.where, spec.where.metric),
    )

    def check(scope: Scope) -> bool:
        last = scope.history.series(metric).up_to(scope.at, count)
        if len(last) < count or last[0].effective < start(scope):
            return False
        return all(map(pred_for(scope), [r.value for r in last]))

    return check


def _absence(cond: AbsenceCond) -> Check:
    spec = cond.absence
    metric = spec.metric

    def check(scope: Scope) -> bool:
        start = window_start(scope.at, within=spec.within, days=spec.days, tz=scope.ctx.tz)
        series = scope.history.series(metric)
        if series.between(start, scope.at):
            return False
        since = scope.ctx.enrolled_since
        return not (series.last_before(start) is None and since is not None and since > start)

    return check


def _pro(cond: ProCond) -> Check:
    spec = cond.pro
    metric, inst = spec.metric, INSTRUMENTS[spec.instrument]
    if spec.band_at_least is not None:
        lowest = dict((name, low) for low, name in inst.bands)[spec.band_at_least]
        return lambda scope: (r := scope.trigger.get(metric)) is not None and r.value >= lowest
    assert spec.op is not None and spec.value is not None
    pred = predicate(spec.op, spec.value)
    return lambda scope: (r := scope.trigger.get(metric)) is not None and pred(r.value)


def _all(children: Sequence[Check]) -> Check:
    def check(scope: Scope) -> bool:
        return all(child(scope) for child in children)

    return check


def _any(children: Sequence[Check]) -> Check:
    def check(scope: Scope) -> bool:
        return any(child(scope) for child in children)

    return check


def _not(cond: NotCond) -> Check:
    inner = compile_check(cond.not_)
    return lambda scope: not inner(scope)
