"""`all: [...]`, `any: [...]` and `not: <condition>`: conditions made of other conditions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from rules.conditions import Scope, evaluate_condition, quick
from rules.fastpath import Check, compile_check
from rules.fields import StrictModel
from rules.model import Condition
from rules.results import ConditionResult


class AllCond(StrictModel):
    all: list[Condition] = Field(min_length=1)


class AnyCond(StrictModel):
    any: list[Condition] = Field(min_length=1)


class NotCond(StrictModel):
    not_: Condition = Field(alias="not")


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
        return quick(held)
    return ConditionResult(kind, held, lambda: f"{kind} of {len(children)} conditions", children=tuple(results))


def evaluate_all(cond: AllCond, scope: Scope) -> ConditionResult:
    return _combine("all", cond.all, scope, stop_when=False)


def evaluate_any(cond: AnyCond, scope: Scope) -> ConditionResult:
    return _combine("any", cond.any, scope, stop_when=True)


def evaluate_not(cond: NotCond, scope: Scope) -> ConditionResult:
    inner = evaluate_condition(cond.not_, scope)
    if not scope.explain:
        return quick(not inner.held)
    return ConditionResult("not", not inner.held, lambda: f"not ({inner.text})", children=(inner,))


def compile_all(cond: AllCond) -> Check:
    children = tuple(compile_check(c) for c in cond.all)
    return lambda scope: all(child(scope) for child in children)


def compile_any(cond: AnyCond) -> Check:
    children = tuple(compile_check(c) for c in cond.any)
    return lambda scope: any(child(scope) for child in children)


def compile_not(cond: NotCond) -> Check:
    inner = compile_check(cond.not_)
    return lambda scope: not inner(scope)


def children_all(cond: AllCond) -> Iterator[tuple[tuple[Any, ...], Any]]:
    return ((("all", i), child) for i, child in enumerate(cond.all))


def children_any(cond: AnyCond) -> Iterator[tuple[tuple[Any, ...], Any]]:
    return ((("any", i), child) for i, child in enumerate(cond.any))


def children_not(cond: NotCond) -> Iterator[tuple[tuple[Any, ...], Any]]:
    return iter(((("not",), cond.not_),))
