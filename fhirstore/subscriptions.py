"""A rest-hook event source: Vigil's own FHIR R4 Subscriptions, and the notifications they bring.

Vigil keeps one classic R4 Subscription per watched type on the server (FHIR R4 §2.46 "Subscription",
channel type rest-hook), with a fixed id so every instance finds the same one:

    Subscription/vigil-observation: criteria "Observation?", channel.endpoint <VIGIL_SUBSCRIPTION_ENDPOINT>,
    channel.payload application/fhir+json, channel.header ["x-functions-key: <key>"]

`ensure` creates a missing one and re-requests one the server turned `off` or `error` (the server
sets `active` when it accepts it; an active one is left alone, so Vigil does not rewrite it on every
check). A notification is turned into events for the same handler path as every other source:

- a full-resource payload (the changed resource itself): one event for its version;
- an empty payload (the R4 "ping"): nothing says what changed, so the polling source runs;
- a Bundle (the Subscriptions R5 Backport IG's notification, or a server that sends a Bundle): a
  `handshake` or `heartbeat` notification carries no change and is acknowledged; an
  `event-notification` yields one event per entry, from its resource (full-resource) or from its
  `fullUrl` / `request.url` (id-only, `Type/id/_history/vid`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fhirstore.errors import InvalidResource, ResourceGone, ResourceNotFound
from fhirstore.event_source import WATCHED_TYPES, Deliver, change_event
from fhirstore.events import event_grid_event
from fhirstore.json_body import parse_json_body
from fhirstore.port import FhirStore, Resource

log = logging.getLogger(__name__)

_NO_CHANGE_TYPES = frozenset({"handshake", "heartbeat", "query-status", "query-event"})


class InvalidNotification(ValueError):
    """A notification body Vigil cannot read (kept out of the handler path, answered 400)."""


@dataclass(frozen=True)
class NotificationResult:
    kind: str  # resource | ping | handshake | heartbeat | event-notification
    delivered: int


class SubscriptionManager:
    """Creates and checks Vigil's Subscriptions on the server."""

    def __init__(self, store: FhirStore, endpoint: str, key: str, *, types: tuple[str, ...] = WATCHED_TYPES,
                 payload: str = "application/fhir+json") -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the subscription endpoint must be an http(s) URL, got {endpoint!r}")
        self.store, self.endpoint, self.key, self.types, self.payload = store, endpoint, key, types, payload

    def wanted(self, resource_type: str) -> Resource:
        channel: dict[str, Any] = {"type": "rest-hook", "endpoint": self.endpoint,
                                   "header": [f"x-functions-key: {self.key}"]}
        if self.payload:
            channel["payload"] = self.payload
        return {"resourceType": "Subscription", "id": f"vigil-{resource_type.lower()}", "status": "requested",
                "reason": "Vigil evaluates care-plan rules on every change (docs/fhir-servers.md)",
                "criteria": f"{resource_type}?", "channel": channel}

    def ensure(self) -> list[str]:
        """Create or re-request what is missing or not running; returns one line per action."""
        actions = []
        for rtype in self.types:
            wanted = self.wanted(rtype)
            try:
                current = self.store.read("Subscription", wanted["id"])
            except (ResourceNotFound, ResourceGone):
                current = None
            if current is not None and current.get("status") in ("active", "requested") and \
                    current.get("criteria") == wanted["criteria"] and current.get("channel") == wanted["channel"]:
                continue
            if current is not None and current.get("status") in ("error", "off"):
                # The server's reason, without the channel (its header holds the key).
                log.warning("Subscription/%s was %s (%s); requesting it again", wanted["id"], current.get("status"),
                            str(current.get("error") or "no reason given")[:200])
            self.store.update(wanted)
            actions.append(f"Subscription/{wanted['id']} {'created' if current is None else 'requested again'}")
        return actions


def handle_notification(body: bytes, deliver: Deliver, *, account: str, on_ping: Callable[[], int],
                        topic: str = "urn:vigil:event-source:rest-hook") -> NotificationResult:
    """Turn one rest-hook POST body into events delivered down the handler path."""
    if not body.strip():
        return NotificationResult("ping", on_ping())
    try:
        # The facade's parser of request bodies: FHIR JSON from outside, so nesting past its limit,
        # lone surrogates, NaN and over-long integers are this body's error, not an exception the
        # server's retry would repeat.
        resource = parse_json_body(body)
    except InvalidResource as exc:
        raise InvalidNotification(f"notification body is not JSON Vigil can read: {exc}") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise InvalidNotification("notification body is not a FHIR resource")
    if resource["resourceType"] != "Bundle":
        payload = change_event(resource, account=account, topic=topic)
        if payload is None:
            raise InvalidNotification(f"notified {resource['resourceType']} has no id or meta.versionId")
        deliver(payload)
        return NotificationResult("resource", 1)
    entries = [e for e in resource.get("entry") or [] if isinstance(e, dict)]
    status = next((e["resource"] for e in entries if isinstance(e.get("resource"), dict)
                   and e["resource"].get("resourceType") in ("SubscriptionStatus", "Parameters")), None)
    kind = _notification_type(status) if status is not None else "event-notification"
    if kind in _NO_CHANGE_TYPES:
        return NotificationResult(kind, 0)
    delivered, unresolved = 0, 0
    for entry in entries:
        if entry.get("resource") is status and status is not None:
            continue
        payload = _entry_event(entry, account=account, topic=topic)
        if payload is not None:
            deliver(payload)
            delivered += 1
        elif _names_watched_type(entry):
            unresolved += 1  # a reference without a version: what changed is known, not which version
    if unresolved:
        delivered += on_ping()
    return NotificationResult(kind, delivered)


def _names_watched_type(entry: Resource) -> bool:
    urls = [entry.get("fullUrl"), (entry.get("request") or {}).get("url")]
    return any(isinstance(u, str) and any(f"{t}/" in u for t in WATCHED_TYPES) for u in urls)


def _notification_type(status: Resource) -> str:
    if status.get("resourceType") == "SubscriptionStatus":  # R4B / R5
        return str(status.get("type") or "event-notification")
    for param in status.get("parameter") or []:  # the R4 backport's Parameters profile
        if isinstance(param, dict) and param.get("name") == "type":
            return str(param.get("valueCode") or "event-notification")
    return "event-notification"


def _entry_event(entry: Resource, *, account: str, topic: str) -> dict[str, Any] | None:
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") in WATCHED_TYPES:
        return change_event(resource, account=account, topic=topic)
    for url in (entry.get("fullUrl"), (entry.get("request") or {}).get("url")):
        if not isinstance(url, str):
            continue
        segments = urlsplit(url).path.strip("/").split("/")
        for i in range(len(segments) - 3):
            rtype, rid, marker, vid = segments[i:i + 4]
            if rtype in WATCHED_TYPES and marker == "_history":
                return event_grid_event(action="created" if vid == "1" else "updated", resource_type=rtype,
                                        resource_id=rid, version_id=vid, account=account, topic=topic,
                                        at=datetime.now(UTC))  # arrival: the entry has no time
    return None


