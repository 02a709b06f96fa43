"""A compiled yes/no check per rule: the hot path of evaluation.

Most evaluations do not fire, and they only need to know that. A rule's condition tree is compiled
once into closures with its fixed thresholds already in canonical units, comparing through C-level
`operator` partials over plain float lists. Only a rule that holds is evaluated again by
`rules.conditions`, which explains the result. Both paths share `window_start`, threshold
resolution and the comparison tolerance; tests check they agree.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from common.codes import METRICS
from rules import registry
from rules.conditions import _EPS, Scope
from rules.fields import Windowed
from rules.model import Rule
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


def threshold_predicate(comparison: Any, metric: str, *, difference: bool = False) -> Callable[[Scope], Predicate]:
    """Fixed thresholds become one predicate now; goal/param thresholds resolve per patient."""
    spec, op = comparison.value, comparison.op
    if type(spec) is Quantity:
        fixed = predicate(op, spec.in_unit(METRICS[metric].unit, difference=difference))
        return lambda scope: fixed

    def resolve(scope: Scope) -> Predicate:
        threshold, effective_op = scope.threshold(spec, metric, op, difference=difference)
        return predicate(effective_op, threshold.value)

    return resolve


def window_start_of(spec: Windowed) -> Callable[[Scope], datetime]:
    if spec.within is not None:
        within = spec.within
        return lambda scope: scope.at - within
    days = spec.days
    return lambda scope: window_start(scope.at, within=None, days=days, tz=scope.ctx.tz)


def window_values(scope: Scope, metric: str, start: datetime) -> list[float]:
    return [r.value for r in scope.history.series(metric).between(start, scope.at)]
