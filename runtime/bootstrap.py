"""The composition root: one place that builds adapters from settings (cosmicpython's bootstrap)."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from common.clock import Clock, FixedClock, SystemClock, parse_instant
from common.storage import private_dir
from fhirstore.event_source import EventSource
from fhirstore.port import EventOutbox, FhirStore
from handlers.enrollment_cache import EnrollmentCache
from handlers.messaging import Messaging
from handlers.reminder_schedule import ReminderSchedule, load_schedule
from ingest.deadletter import SqliteDeadLetterStore
from ingest.identity import IdentityResolver
from ingest.templates.reload import TemplateFiles
from notifications.channels import build_channels
from notifications.channels.base import Channel
from notifications.channels.ledger import FhirSendLedger, SendLedger, SqliteSendLedger
from notifications.consent import SmsConsentRegistry
from notifications.escalation_chains import Chain, load_chains
from notifications.preferences import PreferenceDefaults, PreferenceError
from notifications.templates import TemplateError, TemplateLibrary, normalize_locale
from notifications.tokens import FhirUsedTokens, SignedTokens
from notifications.workflow_events import CallablePublisher, EventGridWorkflowPublisher, WorkflowPublisher
from rules.loader import RuleLoadError, load_rulesets
from rules.model import Ruleset
from runtime.bus import LocalBus
from runtime.rule_checks import unknown_chain_problems
from runtime.settings import Settings, SettingsError

if TYPE_CHECKING:
    from console.accounts import StaffAccounts
    from handlers.acs_event_model import AcsEventDeps
    from handlers.fhir_events import EventDeps
    from handlers.in_process import InProcess
    from handlers.ingest import IngestDeps
    from handlers.pipeline_health import PipelineDeps
    from handlers.quarter_hour_sweep import QuarterHourDeps
    from handlers.reminders import ReminderDeps
    from runtime.http_app import HttpApp

WORKFLOW_EVENTS = "vigil-events"  # the local bus topic workflow events go to (`vigil events tail`)


@runtime_checkable
class _Closable(Protocol):
    """An adapter holding files or connections (the ports do not require one)."""

    def close(self) -> None: ...


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
    messages: TemplateLibrary
    chains: dict[str, Chain]
    preferences: PreferenceDefaults  # where a Patient or staff resource says nothing (settings)
    reminders: ReminderSchedule  # read once from VIGIL_REMINDERS_FILE
    tokens: SignedTokens
    consent: SmsConsentRegistry
    workflow: WorkflowPublisher
    bus: LocalBus | None = None
    send_ledger: SendLedger | None = None  # what the SMS/SMTP channels claim sends in
    outbox: EventOutbox | None = None  # the embedded store's events, relayed by the local host
    # Kept for the process's lifetime, built on first use by the code that needs them:
    enrollments: EnrollmentCache = field(default_factory=EnrollmentCache)  # across FHIR events
    event_source: EventSource | None = None  # runtime.event_sources.event_source
    staff_accounts: StaffAccounts | None = None  # the console's accounts (console.views.accounts_for)
    console_app: HttpApp | None = None  # the console behind the `console` function (runtime.console_function)

    def close(self) -> None:
        for closable in (self.send_ledger, self.store, self.dead_letters, self.bus):
            if isinstance(closable, _Closable):
                closable.close()


def bootstrap(settings: Settings, *, clock: Clock | None = None, bus_clock: Clock | None = None) -> Services:
    """Every adapter from `settings`. `clock` is Vigil's clinical and messaging time; `bus_clock`
    times the local bus's deliveries (visibility, retry backoff, leases) and defaults to the wall
    clock, whatever `clock` is (docs/decisions.md, "The local bus runs on the wall clock")."""
    if clock is None:
        clock = FixedClock(parse_instant(settings.as_of)) if settings.as_of else SystemClock()
    data_dir = settings.data_dir
    private_dir(data_dir)  # 0700, or one warning if an existing directory is looser
    dead_letters = SqliteDeadLetterStore(settings.path("deadletters.db"))
    store, outbox = _fhir_store(settings, clock)
    # Every process that shares bus.db (a `vigil ingest` beside a running `vigil serve`, whatever
    # clock each runs on) must agree on when a message is visible: the bus runs on the wall clock
    # unless a caller (a test) gives it another.
    bus_time = bus_clock or SystemClock()
    bus = LocalBus(settings.path("bus.db"), dead_letters=dead_letters, max_attempts=settings.bus_max_attempts,
                   now=lambda: bus_time.now().timestamp())
    consent = SmsConsentRegistry(store, clock)
    ledger = send_ledger(settings, store)
    channels = build_channels(_channel_config(settings), ledger=ledger, opt_outs=consent, clock=clock,
                              base_dir=data_dir)
    chains = load_chains(settings.escalation_chains)
    problems = unknown_chain_problems(settings.rules_dirs, chains)
    if problems:
        # An alert of such a rule would open and page nobody: refuse to start rather than run it.
        raise RuleLoadError(problems)
    return Services(
        settings=settings,
        store=store,
        dead_letters=dead_letters,
        channels=channels,
        clock=clock,
        rulesets=load_rulesets(settings.rules_dirs),
        templates=TemplateFiles(*settings.template_paths()),
        identity=IdentityResolver(store, settings.identity_mode,
                                  device_identifier_system=settings.device_identifier_system),
        messages=_message_templates(settings),
        chains=chains,
        preferences=_preference_defaults(settings),
        reminders=load_schedule(settings.reminders_file),
        tokens=_tokens(settings, store, clock),
        consent=consent,
        workflow=_workflow_publisher(settings, bus),
        bus=bus,
        send_ledger=ledger,
        outbox=outbox,
    )


def messaging(services: Services) -> Messaging:
    """What every handler that sends messages needs, built once from the services and settings
    (the Functions triggers, the local host and the console all call this)."""
    settings = services.settings
    return Messaging(
        store=services.store, channels=services.channels, clock=services.clock, templates=services.messages,
        chains=services.chains, tokens=services.tokens, workflow=services.workflow, org_name=settings.org_name,
        contact_phone=settings.contact_phone, public_base_url=settings.ack_base_url,
        staff_fallback_address=settings.staff_address, defaults=services.preferences,
    )


def event_deps(services: Services) -> EventDeps:
    """What `handlers.fhir_events.handle_fhir_event` needs (every FHIR event source calls this)."""
    from handlers.fhir_events import EventDeps  # the rules engine: not at start-up

    return EventDeps(messaging=messaging(services), rulesets=services.rulesets, dead_letters=services.dead_letters,
                     enrollments=services.enrollments)


def ingest_deps(services: Services) -> IngestDeps:
    """What `handlers.ingest.handle_device_messages` needs (the Event Hubs trigger, HTTP ingest, the CLI)."""
    from datetime import timedelta

    from handlers.ingest import IngestDeps  # the template engine: not at start-up

    settings = services.settings
    return IngestDeps(
        store=services.store, dead_letters=services.dead_letters, templates=services.templates.current,
        identity=services.identity, clock=services.clock, topic=settings.event_hub_name,
        max_bytes=settings.max_message_bytes, max_future_skew=timedelta(seconds=settings.max_future_skew_s),
    )


def in_process(services: Services) -> InProcess | None:
    """With the embedded store, a batch's Observations are evaluated by the process that wrote them
    (`handlers.in_process`); a FHIR server's own events drive evaluation instead (None)."""
    from handlers.in_process import InProcess

    if services.outbox is None:
        return None
    return InProcess(events=event_deps(services), outbox=services.outbox, account=services.settings.fhir_account)


def acs_deps(services: Services) -> AcsEventDeps:
    """What `handlers.acs_events.handle_acs_event` needs: inbound texts and delivery reports."""
    from handlers.acknowledge import acknowledge_by_code
    from handlers.acs_event_model import AcsEventDeps
    from notifications.ack_lockout import AckSenderLimit
    from notifications.channels.pipeline import GuardedChannel

    settings = services.settings
    alerts = messaging(services)  # the same store, tokens and workflow events as the link path
    return AcsEventDeps(
        store=services.store, channels=services.channels, clock=services.clock, consent=services.consent,
        templates=services.messages, workflow=services.workflow, dead_letters=services.dead_letters,
        org_name=settings.org_name,
        # Without a configured help line the HELP answer still says whom to call.
        contact_phone=settings.contact_phone or settings.program_contact,
        ack_replies=lambda reply: acknowledge_by_code(alerts, reply.code, reply.sender),
        sms_channel="sms", defaults=services.preferences,
        # The SMS channel's send ledger: a "Delivered" report settles an in-doubt send.
        ledger=sms.ledger if isinstance(sms := services.channels.get("sms"), GuardedChannel) else None,
        # In the FHIR store, so every instance sees the same failures and lockouts.
        ack_limit=AckSenderLimit(services.store, services.clock, settings.ack_sms_limits),
    )


def reminder_deps(services: Services) -> ReminderDeps:
    """What `handlers.reminders.run_reminder_sweep` needs: the schedule read at start."""
    from handlers.reminders import ReminderDeps

    return ReminderDeps(messaging=messaging(services), rulesets=services.rulesets, schedule=services.reminders)


def pipeline_deps(services: Services) -> PipelineDeps:
    """What the pipeline-health handler reads (the console's operations page and the alert-sweep
    timer's stalled-pipeline notice both call this)."""
    from handlers.pipeline_health import PipelineDeps  # the sweeps it reads load the rules: not at start-up

    return PipelineDeps(
        store=services.store, clock=services.clock, channels=services.channels, dead_letters=services.dead_letters,
        bus=services.bus, staff_address=services.settings.staff_address, org_name=services.settings.org_name,
        # Published workflow events are kept a week for `vigil events tail`: not a backlog.
        not_backlog=frozenset({WORKFLOW_EVENTS}),
        outbox_size=services.outbox.outbox_size if services.outbox is not None else None,
    )


def quarter_hour_deps(services: Services) -> QuarterHourDeps:
    """What the quarter-hour `alert_sweep` timer's handler needs (`handlers.quarter_hour_sweep`)."""
    from handlers.quarter_hour_sweep import QuarterHourDeps

    return QuarterHourDeps(events=event_deps(services), pipeline=pipeline_deps(services))


def send_ledger(settings: Settings, store: FhirStore) -> SendLedger:
    """The send ledger `VIGIL_SEND_LEDGER` names (Settings.send_ledger_kind). A SQLite file is per
    machine: on Azure each Functions instance would have its own, and two instances could both
    send one SMS, so with a FHIR server the claims live in the FHIR store by default."""
    if settings.send_ledger_kind == "fhir":
        return FhirSendLedger(store)
    return SqliteSendLedger(settings.path("sends.db"))


def _channel_config(settings: Settings) -> dict[str, Any]:
    if settings.channels_config is None:
        # The embedded default: every channel kind is a file outbox (one JSON file per message).
        # "outbox" is relative to the data directory (build_channels resolves it there).
        return {name: {"type": "outbox", "directory": "outbox"} for name in ("outbox", "sms", "email")}
    text = Path(settings.channels_config).read_text()
    config = yaml.safe_load(text)  # JSON is YAML too
    if not isinstance(config, dict):
        raise ValueError(f"{settings.channels_config}: expected a mapping of channel name to settings")
    return config


def _message_templates(settings: Settings) -> TemplateLibrary:
    """The one library every message is rendered from: VIGIL_MESSAGE_TEMPLATES_PATH, then the shipped templates."""
    try:
        return TemplateLibrary(settings.message_templates_path)
    except TemplateError as exc:
        raise SettingsError(f"VIGIL_MESSAGE_TEMPLATES_PATH: {exc}") from None


def _preference_defaults(settings: Settings) -> PreferenceDefaults:
    try:
        locale = normalize_locale(settings.default_locale)
    except TemplateError as exc:
        raise SettingsError(f"VIGIL_DEFAULT_LOCALE: {exc}") from None
    try:
        return PreferenceDefaults(locale=locale, time_zone=settings.default_time_zone)
    except PreferenceError as exc:
        raise SettingsError(f"VIGIL_DEFAULT_TIME_ZONE: {exc}") from None


def _tokens(settings: Settings, store: FhirStore, clock: Clock) -> SignedTokens:
    text = settings.ack_token_keys or _secret_file(
        settings, "ack-token-key", lambda: "local:" + secrets.token_urlsafe(48)
    )
    keys = dict(part.split(":", 1) for part in text.split(",") if ":" in part)
    if not keys:
        raise ValueError("VIGIL_ACK_TOKEN_KEYS must look like 'kid:secret[,kid:secret]'")
    return SignedTokens(keys, current=next(iter(keys)), used=FhirUsedTokens(store), clock=clock)


def _workflow_publisher(settings: Settings, bus: LocalBus) -> WorkflowPublisher:
    if settings.workflow_topic_endpoint:
        return EventGridWorkflowPublisher(settings.workflow_topic_endpoint, settings.workflow_topic_key or "")
    return CallablePublisher(lambda body, event_id: bus.publish(WORKFLOW_EVENTS, body, msg_id=event_id))


def _fhir_store(settings: Settings, clock: Clock) -> tuple[FhirStore, EventOutbox | None]:
    """The FHIR store, and its event outbox when it keeps one (the embedded store does)."""
    if settings.fhir_url is None:
        from fhirstore.sqlite import SqliteFhirStore

        embedded = SqliteFhirStore(settings.path("fhir.db"), clock=clock, account=settings.fhir_account)
        return embedded, embedded
    from fhirstore.http_store import HttpFhirStore

    credential = None
    if settings.fhir_auth == "azure":
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return HttpFhirStore(settings.fhir_url, credential=credential, scope=settings.fhir_scope,
                         max_transaction_entries=settings.fhir_transaction_size), None


def local_token(settings: Settings) -> str:
    """The token local HTTP endpoints require: from settings, else one made once per data dir."""
    return settings.local_token or _secret_file(settings, "local-token", lambda: secrets.token_urlsafe(24))


def _secret_file(settings: Settings, name: str, make: Callable[[], str]) -> str:
    """A secret made once per data directory, readable by its owner only (the embedded default;
    on Azure secrets come from app settings)."""
    path = settings.path(name)
    private_dir(settings.data_dir)
    try:
        # Created with mode 0600 from the start, and only once even if two processes race.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(make())
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
            settings = Settings.from_env()
            settings.require_contact_phone()  # the Functions app sends patient messages
            _current = bootstrap(settings)
        return _current
