"""Which event source feeds `on_fhir_event`'s handler path, chosen from settings (the composition
root for the event-source port, `fhirstore.event_source`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlsplit

from fhirstore.event_source import Deliver, EventSource, PushedEvents
from fhirstore.polling_source import FhirCursorStore, PollingSource
from fhirstore.subscriptions import NotificationResult, SubscriptionManager, handle_notification
from runtime.bootstrap import Services, local_token
from runtime.settings import Settings

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
