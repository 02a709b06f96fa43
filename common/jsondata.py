"""Helpers for JSON-shaped data (FHIR resources as dicts and lists)."""

from __future__ import annotations

from typing import Any, TypeVar, cast

T = TypeVar("T")


def json_copy(value: T) -> T:
    """A deep copy of JSON data (dicts, lists, scalars); several times faster than copy.deepcopy,
    which matters for resources copied on every event (an episode's DetectedIssue grows with it)."""
    return cast(T, _copy(value))


def _copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return value
