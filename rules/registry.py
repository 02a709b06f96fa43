"""The condition registry: every condition kind of the rule language, one entry each.

An entry holds everything the engine needs to know about a kind: the pydantic model of its YAML
mapping (`{<kind>: ...}`), its explaining evaluator, its optional fast-path compiler and, for kinds
that are not built in, what history it reads. The built-in kinds are registered by `rules.kinds`;
docs/rules.md ("Adding a condition kind") shows how to add one. Imports nothing of the rule model,
so the model, the evaluators and the kinds can all depend on it without cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class ConditionKind:
    """One condition kind. `evaluate(condition, scope)` returns a `rules.results.ConditionResult`;
    `compile(condition)` returns a `Scope -> bool` check for the fast path (None: the fast path
    calls `evaluate`); `needs(condition)` returns the metrics it reads and how far back it looks
    (for the history a handler loads and for the rule's triggers)."""

    name: str
    model: type[BaseModel]
    evaluate: Callable[[Any, Any], Any]
    compile: Callable[[Any], Callable[[Any], bool]] | None = None
    needs: Callable[[Any], tuple[frozenset[str], timedelta]] | None = None


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


def all_kinds() -> Iterator[ConditionKind]:
    return iter(tuple(_BY_NAME.values()))
