"""The condition registry: every condition kind of the rule language, one entry each.

An entry holds everything the engine needs to know about a kind: the pydantic model of its YAML
mapping (`{<kind>: ...}`), its explaining evaluator, its optional fast-path compiler, what history
it reads (`needs`: the metrics, the lookback, the thresholds the rule checks against those metrics)
and, for combinators, its child conditions. The built-in kinds are modules of `rules.kinds`, one
each, registered in `rules/kinds/__init__.py`; docs/architecture.md ("Adding a rule condition")
shows how to add one. Imports nothing of the rule model, so the model, the evaluators and the kinds
can all depend on it without cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

# (field path below the condition, threshold spec, metric it bounds, compared with a difference)
ThresholdUse = tuple[tuple[str, ...], Any, str, bool]


@dataclass(frozen=True)
class Needs:
    """What one condition reads: `metrics` are loaded and their new readings trigger the rule;
    `absent` are loaded for their absence only (the alert sweep evaluates those rules, new readings
    only end a gap); `lookback` is how far back the condition looks; every `thresholds` entry is
    checked by the rule against its metric's unit and the rule's params."""

    metrics: frozenset[str] = frozenset()
    lookback: timedelta = timedelta(0)
    absent: frozenset[str] = frozenset()
    thresholds: tuple[ThresholdUse, ...] = ()


@dataclass(frozen=True)
class ConditionKind:
    """One condition kind. `evaluate(condition, scope)` returns a `rules.results.ConditionResult`;
    `compile(condition)` returns a `Scope -> bool` check for the fast path (None: the fast path
    calls `evaluate`); `needs(condition)` returns a `Needs`; `children(condition)` yields (path
    below the condition, child) for a kind made of others."""

    name: str
    model: type[BaseModel]
    evaluate: Callable[[Any, Any], Any]
    compile: Callable[[Any], Callable[[Any], bool]] | None = None
    needs: Callable[[Any], Needs] | None = None
    children: Callable[[Any], Iterable[tuple[tuple[Any, ...], Any]]] | None = None


_BY_NAME: dict[str, ConditionKind] = {}
_BY_MODEL: dict[type, ConditionKind] = {}


def register(kind: ConditionKind) -> ConditionKind:
    """Add a kind; its name is the YAML key. A name can be registered once."""
    if kind.name in _BY_NAME:
        raise ValueError(f"condition kind {kind.name!r} is already registered")
    _BY_NAME[kind.name] = kind
    _BY_MODEL[kind.model] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register their own kinds clean up with this)."""
    kind = _BY_NAME.pop(name)
    _BY_MODEL.pop(kind.model, None)


def names() -> tuple[str, ...]:
    """The registered kinds in registration order (error messages list them)."""
    return tuple(_BY_NAME)


def named(name: str) -> ConditionKind | None:
    return _BY_NAME.get(name)


def of_model(model: type) -> ConditionKind | None:
    return _BY_MODEL.get(model)


def of(condition: object) -> ConditionKind:
    """The kind of a validated condition."""
    return _BY_MODEL[type(condition)]


def needs_of(condition: object) -> Needs | None:
    """What `condition` itself reads (None for a kind without `needs`, such as a combinator)."""
    needs = of(condition).needs
    return None if needs is None else needs(condition)


def children_of(condition: object) -> Iterable[tuple[tuple[Any, ...], Any]]:
    """(path below `condition`, child) for each condition it is made of."""
    children = of(condition).children
    return children(condition) if children is not None else ()


def all_kinds() -> Iterator[ConditionKind]:
    return iter(tuple(_BY_NAME.values()))
