"""Which event source feeds `on_fhir_event`'s handler path, chosen from settings (the composition
root for the event-source port, `fhirstore.event_source`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from fhirstore.event_source import Deliver, EventSource, PushedEvents
from fhirstore.polling_source import FhirCursorStore, PollingSource
from fhirstore.subscriptions import (
    InvalidNotification,
    NotificationResult,
    SubscriptionManager,
    handle_notification,
)
from runtime.bootstrap import Services, event_deps, local_token
from runtime.settings import Settings

log = logging.getLogger(__name__)
SUBSCRIPTION_CHECK = timedelta(minutes=10)


def source_kind(settings: Settings) -> str:
    """`VIGIL_EVENT_SOURCE`, with `auto` resolved: the embedded store's outbox; Event Grid for
    Health Data Services (it publishes FHIR events to Event Grid); polling for any other server,
    which pushes nothing to Vigil unless told to."""
    if settings.event_source != "auto":
        return settings.event_source
    if settings.embedded:
        return "outbox"
    host = urlsplit(settings.fhir_url or "").hostname or ""
    return "eventgrid" if host.endswith(".azurehealthcareapis.com") else "poll"


class RestHookSource:
    """Vigil's R4 Subscriptions on the server: `pull` keeps them in place (checked every 10
    minutes), `receive` turns a posted notification into events; an empty ("ping") notification, or
    one naming a change without its version, runs the polling source, which knows what changed."""

    name = "rest-hook"

    def __init__(self, services: Services) -> None:
        settings = services.settings
        self.clock = services.clock
        self.account = settings.fhir_account
        self.subscriptions = SubscriptionManager(services.store, settings.subscription_endpoint or "",
                                                 settings.subscription_key or local_token(settings))
        self.polling = PollingSource(services.store, FhirCursorStore(services.store), services.clock,
                                     account=settings.fhir_account, name="rest-hook")
        self._checked_at: datetime | None = None

    def pull(self, deliver: Deliver, *, limit: int = 1000) -> int:
        now = self.clock.now()
        if self._checked_at is None or now - self._checked_at >= SUBSCRIPTION_CHECK:
            self.subscriptions.ensure()
            self._checked_at = now
        return 0

    def receive(self, body: bytes, deliver: Deliver) -> NotificationResult:
        return handle_notification(body, deliver, account=self.account, on_ping=lambda: self.polling.pull(deliver))


def event_source(services: Services) -> EventSource:
    """The services' event source, built once."""
    source = services.event_source
    if source is None:
        kind = source_kind(services.settings)
        if kind == "poll":
            source = PollingSource(services.store, FhirCursorStore(services.store), services.clock,
                                   account=services.settings.fhir_account)
        elif kind == "rest-hook":
            source = RestHookSource(services)
        else:
            source = PushedEvents(kind)
        services.event_source = source
    return source


# -- what the FHIR-source functions run (triggers/fhir_sources.py) -------------------------------

def pull_changes(services: Services) -> int:
    """The changes a polling source finds, down `on_fhir_event`'s path; with a pushed source
    (Event Grid, the embedded outbox) there is nothing to pull and nothing is read."""
    from handlers.fhir_events import handle_fhir_event  # the rules engine: not at start-up

    deps = event_deps(services)
    pulled = event_source(services).pull(lambda payload: handle_fhir_event(payload, deps))
    if pulled:
        log.info("pulled %d FHIR change event(s)", pulled)
    return pulled


@dataclass(frozen=True)
class NotificationAnswer:
    status: int  # the HTTP status
    body: dict[str, Any]  # the JSON answer


def receive_notification(services: Services, body: bytes) -> NotificationAnswer:
    """A rest-hook notification from Vigil's R4 Subscriptions (VIGIL_EVENT_SOURCE=rest-hook). A body
    Vigil cannot read is dead-lettered and answered 400 (the server should not retry it); a failure
    to evaluate raises, so the server's retry delivers it again."""
    from handlers.fhir_events import handle_fhir_event

    source = event_source(services)
    if not isinstance(source, RestHookSource):
        return NotificationAnswer(404, {"error": "VIGIL_EVENT_SOURCE is not rest-hook"})
    deps = event_deps(services)
    try:
        result = source.receive(body, lambda payload: handle_fhir_event(payload, deps))
    except InvalidNotification as exc:
        services.dead_letters.add(topic="fhir-notifications", reason="invalid_notification", detail=str(exc),
                                  payload=body, source="rest-hook")
        return NotificationAnswer(400, {"error": str(exc)})
    return NotificationAnswer(200, {"kind": result.kind, "delivered": result.delivered})
