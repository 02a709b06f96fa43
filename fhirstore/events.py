"""FHIR resource events in the Azure Health Data Services schema (https://learn.microsoft.com/azure/healthcare-apis/events/events-message-structure).

The embedded store emits these in the Event Grid envelope; consumers accept Event Grid and
CloudEvents envelopes and both generations of data field names.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from common.clock import iso

EVENT_PREFIX = "Microsoft.HealthcareApis.FhirResource"
CREATED = EVENT_PREFIX + "Created"
UPDATED = EVENT_PREFIX + "Updated"
DELETED = EVENT_PREFIX + "Deleted"
EVENT_TYPES = frozenset({CREATED, UPDATED, DELETED})

# The namespace makes event ids deterministic: re-emitting the event of one version keeps its id.
_EVENT_NS = uuid.UUID("5f0d7f0e-6c1b-4a55-9a43-3b8a0c0b1f10")

Action = Literal["created", "updated", "deleted"]
_EVENT_TYPE_OF: dict[Action, str] = {"created": CREATED, "updated": UPDATED, "deleted": DELETED}
_ACTION_OF: dict[str, Action] = {event_type: action for action, event_type in _EVENT_TYPE_OF.items()}


@dataclass(frozen=True)
class FhirEvent:
    """One FHIR change, as a consumer sees it: ids only, the body must be fetched."""

    id: str
    event_type: str
    resource_type: str
    resource_id: str
    version_id: str
    account: str
    event_time: datetime | None

    @property
    def action(self) -> Action:
        return _ACTION_OF[self.event_type]  # parse_event admits only the three EVENT_TYPES


class InvalidEvent(ValueError):
    """An event payload that is not a FHIR resource event we can act on."""


def event_id(resource_type: str, resource_id: str, version_id: str, action: str) -> str:
    return str(uuid.uuid5(_EVENT_NS, f"{action}|{resource_type}/{resource_id}/_history/{version_id}"))


def event_grid_event(
    *,
    action: Action,
    resource_type: str,
    resource_id: str,
    version_id: str,
    account: str,
    topic: str,
    at: datetime,
) -> dict[str, Any]:
    """The Event Grid schema envelope the Health Data Services FHIR service publishes."""
    event_type = _EVENT_TYPE_OF[action]
    return {
        "id": event_id(resource_type, resource_id, version_id, action),
        "topic": topic,
        "subject": f"{account}/{resource_type}/{resource_id}",
        "data": {
            "resourceType": resource_type,
            "resourceFhirAccount": account,
            "resourceFhirId": resource_id,
            "resourceVersionId": int(version_id) if version_id.isdigit() else version_id,
        },
        "eventType": event_type,
        "dataVersion": str(version_id),
        "metadataVersion": "1",
        "eventTime": iso(at),
    }


def parse_event(payload: dict[str, Any]) -> FhirEvent:
    """Read an Event Grid or CloudEvents envelope (old or new data field names)."""
    if not isinstance(payload, dict):
        raise InvalidEvent("event is not a JSON object")
    event_type = payload.get("eventType") or payload.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidEvent(f"unsupported event type {event_type!r}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent("event has no data object")
    rtype = data.get("resourceType") or data.get("fhirResourceType")
    rid = data.get("resourceFhirId") or data.get("fhirResourceId")
    vid = data.get("resourceVersionId", data.get("fhirResourceVersionId"))
    account = data.get("resourceFhirAccount") or data.get("fhirServiceHostName") or ""
    missing = [n for n, v in (("resourceType", rtype), ("resourceFhirId", rid), ("resourceVersionId", vid))
               if v in (None, "")]
    if missing:
        raise InvalidEvent(f"event data lacks {', '.join(missing)}")
    resource_type, resource_id, version_id = str(rtype), str(rid), str(vid)
    when = payload.get("eventTime") or payload.get("time")
    event_time = None
    if isinstance(when, str):
        try:
            event_time = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            event_time = None
    return FhirEvent(
        id=str(payload.get("id") or event_id(resource_type, resource_id, version_id, event_type)),
        event_type=event_type,
        resource_type=resource_type,
        resource_id=resource_id,
        version_id=version_id,
        account=str(account),
        event_time=event_time,
    )
