"""The composition root: one place that builds adapters from settings (cosmicpython's bootstrap)."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from common.clock import Clock, SystemClock
from fhirstore.port import FhirStore
from ingest.deadletter import SqliteDeadLetterStore
from ingest.identity import IdentityResolver
from ingest.templates.reload import TemplateFiles
from notifications.channels.base import Channel
from notifications.channels.outbox import OutboxChannel
from rules.loader import load_rulesets
from rules.model import Ruleset
from runtime.bus import LocalBus
from runtime.settings import Settings


@dataclass
class Services:
    settings: Settings
    store: FhirStore
    dead_letters: SqliteDeadLetterStore
    channels: dict[str, Channel]
    clock: Clock
    rulesets: list[Ruleset]
    templates: TemplateFiles
    identity: IdentityResolver
    bus: LocalBus | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        for closable in (self.store, self.dead_letters, self.bus):
            close = getattr(closable, "close", None)
            if close is not None:
                close()


def bootstrap(settings: Settings, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    dead_letters = SqliteDeadLetterStore(settings.path("deadletters.db"))
    store = _fhir_store(settings, clock)
    bus = LocalBus(settings.path("bus.db"), dead_letters=dead_letters, max_attempts=settings.bus_max_attempts)
    channels: dict[str, Channel] = {"outbox": OutboxChannel(settings.path("outbox"))}
    return Services(
        settings=settings,
        store=store,
        dead_letters=dead_letters,
        channels=channels,
        clock=clock,
        rulesets=load_rulesets(settings.rules_path),
        templates=TemplateFiles(*settings.template_paths()),
        identity=IdentityResolver(store, settings.identity_mode,
                                  device_identifier_system=settings.device_identifier_system),
        bus=bus,
    )


def _fhir_store(settings: Settings, clock: Clock) -> FhirStore:
    if settings.fhir_url is None:
        from fhirstore.sqlite_store import SqliteFhirStore

        return SqliteFhirStore(settings.path("fhir.db"), clock=clock, account=settings.fhir_account)
    from fhirstore.http_store import HttpFhirStore

    credential = None
    if settings.fhir_auth == "azure":
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return HttpFhirStore(settings.fhir_url, credential=credential, scope=settings.fhir_scope)


def local_token(settings: Settings) -> str:
    """The token local HTTP endpoints require: from settings, else one made once per data dir."""
    if settings.local_token:
        return settings.local_token
    path = settings.path("local-token")
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


# -- the services the trigger functions use --------------------------------------------------
_lock = threading.Lock()
_current: Services | None = None


def install(services: Services | None) -> None:
    """Make `services` the ones trigger functions use (the local host and tests call this)."""
    global _current
    with _lock:
        _current = services


def current() -> Services:
    """The installed services, or ones built from the environment on first use (on Azure).

    Built lazily, never at import: an import-time failure would make the Functions host index
    zero functions."""
    global _current
    with _lock:
        if _current is None:
            _current = bootstrap(Settings.from_env())
        return _current
