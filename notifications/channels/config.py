"""What a provider module declares to be configurable (`ProviderSpec`), and the helpers its
builder uses to read its settings. Errors name the channel and the field, never a secret's value."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.clock import Clock
from notifications.channels.base import ChannelKind, Provider
from notifications.connection import Secret


class ChannelConfigError(ValueError):
    """A channel configuration Vigil cannot use; names the channel and the field."""


# Settings of the pipeline, accepted in every channel's entry (`notifications.channels.pipeline`).
PIPELINE_FIELDS = frozenset({"type", "kind", "default_region"})


@dataclass(frozen=True)
class BuildContext:
    clock: Clock
    base_dir: Path | None  # what relative paths in a channel's settings are relative to


@dataclass(frozen=True)
class ProviderSpec:
    """One provider type: the kinds it can carry (the first is its default), its own settings, and
    how to build it from a channel's entry. SDK imports belong inside `build` or the adapter's
    methods, never at module level (no heavy imports or I/O at load)."""

    kinds: tuple[ChannelKind, ...]
    fields: frozenset[str]
    build: Callable[[str, Mapping[str, Any], BuildContext], Provider]


def require(name: str, entry: Mapping[str, Any], field: str) -> Any:
    value = entry.get(field)
    if value in (None, ""):
        raise ChannelConfigError(f"channel {name!r}: {field!r} is required")
    return value


def secret_text(value: Any) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)
