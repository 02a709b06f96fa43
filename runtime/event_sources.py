"""Which event source feeds `on_fhir_event`'s handler path, chosen from settings (the composition
root for the event-source port, `fhirstore.event_source`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from fhirstore.event_source import EventSource, PushedEvents
from fhirstore.polling_source import FhirCursorStore, PollingSource
from runtime.bootstrap import Services
from runtime.settings import Settings

_KEY = "event_source"


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


def event_source(services: Services) -> EventSource:
    """The services' event source, built once."""
    source = services.extras.get(_KEY)
    if source is None:
        kind = source_kind(services.settings)
        if kind == "poll":
            source = PollingSource(services.store, FhirCursorStore(services.store), services.clock,
                                   account=services.settings.fhir_account)
        else:
            source = PushedEvents(kind)
        services.extras[_KEY] = source
    return source
