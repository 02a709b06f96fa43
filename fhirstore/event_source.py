"""The event-source port: where Vigil learns that a FHIR resource changed.

Every source hands the same thing to the same handler path (`handlers.fhir_events.handle_fhir_event`):
a FHIR resource event in the Health Data Services Event Grid schema, ids only, whose id is
deterministic per resource version (`fhirstore.events.event_id`), so a change delivered twice, by
one source or by two, is acted on once downstream. Sources differ in who moves:

- pushed sources (Health Data Services through Event Grid, the embedded store's outbox relayed by
  `vigil serve`) deliver on their own; `pull` has nothing to do;
- a polling source (`fhirstore.polling_source`) asks the server for what changed since its
  persisted cursor;
- a rest-hook source (`fhirstore.subscriptions`) keeps Vigil's R4 Subscriptions in place and turns
  the notifications the server posts into events.

Which one runs is chosen in `runtime.event_sources` from `VIGIL_EVENT_SOURCE` (docs/fhir-servers.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fhirstore.events import event_grid_event
from fhirstore.port import Resource

Deliver = Callable[[dict[str, Any]], Any]  # one event payload -> the handler path (raises: retry later)

# The resource types whose changes Vigil's rules act on (handlers.fhir_events ignores the rest).
WATCHED_TYPES = ("Observation", "QuestionnaireResponse")


class EventSource(Protocol):
    name: str

    def pull(self, deliver: Deliver, *, limit: int = 1000) -> int:
        """Deliver what changed since the last pull, at most `limit` events; return how many.
        At-least-once: progress is kept only for events `deliver` returned from."""
        ...


class PushedEvents:
    """A source the platform pushes (Event Grid to `on_fhir_event`, or the embedded outbox that the
    local host relays): nothing to pull."""

    def __init__(self, name: str) -> None:
        self.name = name

    def pull(self, deliver: Deliver, *, limit: int = 1000) -> int:
        return 0


def change_event(resource: Resource, *, account: str, topic: str) -> dict[str, Any] | None:
    """The event of one stored version (None when the resource carries no id or version)."""
    meta = resource.get("meta") or {}
    rtype, rid, vid = resource.get("resourceType"), resource.get("id"), meta.get("versionId")
    if not (isinstance(rtype, str) and rid and vid is not None):
        return None
    return event_grid_event(
        action="created" if str(vid) == "1" else "updated",
        resource_type=rtype,
        resource_id=str(rid),
        version_id=str(vid),
        account=account,
        topic=topic,
        at=parse_instant(meta.get("lastUpdated")) or datetime.now(UTC),
    )


def parse_instant(value: object) -> datetime | None:
    """A FHIR instant as an aware datetime (servers write 3 to 7 fractional digits)."""
    if not isinstance(value, str) or "T" not in value:
        return None
    text = value.replace("Z", "+00:00")
    head, sep, rest = text.partition(".")
    if sep:
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
