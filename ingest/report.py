"""The ingest report: what became of each message of a batch, and of the Observations it touched.

Message outcomes (docs/ingest-accounting.md) add up to `received`; Observation counts are apart,
since several messages can land in one Observation and one message can write several.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

WRITTEN = "written"
SUPERSEDED = "superseded"
DEAD_LETTERED = "dead_lettered"


@dataclass
class IngestReport:
    """Message outcomes (they add up to `received`) and, separately, what happened to Observations."""

    received: int = 0
    written: int = 0
    superseded: int = 0
    dead_lettered: int = 0
    created: int = 0  # Observations
    updated: int = 0
    unchanged: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    outcomes: list[str | None] = field(default_factory=list, repr=False)  # per message, in batch order
    # The Observation versions this batch wrote (created or changed), as stored: a host with an
    # embedded store evaluates them at once (handlers.in_process).
    stored: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def accepted(self) -> int:
        return self.written + self.superseded

    @property
    def unaccounted(self) -> int:
        return self.received - self.written - self.superseded - self.dead_lettered

    def add(self, other: IngestReport) -> None:
        for name in ("received", "written", "superseded", "dead_lettered", "created", "updated", "unchanged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.outcomes.extend(other.outcomes)
        self.stored.extend(other.stored)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received, "written": self.written, "superseded": self.superseded,
            "dead_lettered": self.dead_lettered, "unaccounted": self.unaccounted, "reasons": dict(self.reasons),
            "observations": {"created": self.created, "updated": self.updated, "unchanged": self.unchanged},
        }


_listeners: list[Callable[[IngestReport], None]] = []
_listeners_lock = threading.Lock()


@contextmanager
def reports_to(listener: Callable[[IngestReport], None]) -> Iterator[None]:
    """While inside, `listener` gets the report of every batch this process ingests: how `vigil
    ingest` adds up the batches the local host ran for it off the bus."""
    with _listeners_lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(listener)


def notify(report: IngestReport) -> None:
    """Hand a batch's report to every listener registered with `reports_to`."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(report)
