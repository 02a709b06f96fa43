"""One typed settings object, read from the environment (Functions app settings or a shell).

Every setting is documented in local.settings.example.json. Secrets are read here and nowhere
else, and `Settings.__repr__` never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifications.ack_lockout import AckLimits

from common.clock import parse_instant

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules" / "library"
DEFAULT_CHAINS = Path(__file__).resolve().parent.parent / "notifications" / "chains.yaml"
DEFAULT_REMINDERS = Path(__file__).resolve().parent.parent / "notifications" / "reminders.yaml"
SEND_LEDGERS = ("sqlite", "fhir")


EVENT_SOURCES = ("auto", "eventgrid", "outbox", "poll", "rest-hook")
EXPORT_SOURCES = ("auto", "embedded", "search", "bulk")


class SettingsError(ValueError):
    """A setting with a value Vigil cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".vigil")
    # FHIR: embedded SQLite store unless a server URL is given.
    fhir_url: str | None = None
    fhir_scope: str | None = None  # Entra ID scope; default "<fhir_url origin>/.default"
    fhir_auth: str = "none"  # none | azure (DefaultAzureCredential from azure-identity)
    fhir_account: str = "localhost"  # resourceFhirAccount in events of the embedded store
    # Directories of ruleset YAML files added to the shipped library (os.pathsep-separated in
    # VIGIL_RULES_PATH); `rules_shipped = "false"` leaves the shipped library out.
    rules_path: tuple[Path, ...] = ()
    rules_shipped: bool = True
    # Entries per transaction the HTTP adapter sends (larger ones go in consecutive chunks):
    # 50 suits Medplum (at most 50 updates) and Health Data Services (at most 500); docs/fhir-servers.md.
    fhir_transaction_size: int = 50
    # Where FHIR change events come from (runtime/event_sources.py, docs/fhir-servers.md): auto |
    # eventgrid | outbox | poll | rest-hook. auto: the embedded store's outbox, Event Grid for Health Data
    # Services, polling for any other server.
    event_source: str = "auto"
    # rest-hook: where the FHIR server posts notifications (the fhir_notification function's URL),
    # and the function key it sends as x-functions-key (default: the local token).
    subscription_endpoint: str | None = None
    subscription_key: str | None = field(default=None, repr=False)
    max_message_bytes: int = 256 * 1024
    # Readings dated more than this after they arrived are dead-lettered (`future_reading`):
    # a wrong device clock, not a reading (ingest/templates/reading_time.py).
    max_future_skew_s: float = 900.0
    # Ingest mapping: MedTech-compatible template files, or a shipped preset (ingest/presets).
    templates_preset: str = "vigil-generic"
    device_templates: Path | None = None  # overrides the preset's device mapping file
    fhir_templates: Path | None = None  # overrides the preset's FHIR mapping file
    identity_mode: str = "Lookup"  # Lookup | Create | LookupWithEncounter (as in MedTech)
    device_identifier_system: str | None = None
    event_hub_name: str = "device-messages"
    http_host: str = "127.0.0.1"
    http_port: int = 7071
    # `vigil serve` limits (docs/decisions.md, "The local HTTP server"): a connection that has not
    # sent its request headers within the idle timeout (or goes silent that long) is closed; a body
    # must arrive within the body timeout; a body over the limit is refused with 413 unread.
    http_idle_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_max_body_bytes: int = 16 * 1024 * 1024
    local_token: str | None = field(default=None, repr=False)
    bus_max_attempts: int = 5
    bus_visibility_timeout_s: float = 60.0
    # `vigil serve` worker processes (docs/operations.md, "Worker processes"): 1 pumps in the serving
    # process; N > 1 starts N workers over the data dir, each taking its share of the bus partitions.
    workers: int = 1
    program_contact: str = "your care team"
    staff_address: str = "care-team"
    # Notifications (docs/notifications.md). Without a channels file, "sms" and "email" are the
    # file outbox under the data directory (the embedded default).
    channels_config: Path | None = None  # JSON or YAML mapping of channel name -> settings
    escalation_chains: Path = DEFAULT_CHAINS
    reminders_file: Path = DEFAULT_REMINDERS  # the reminder schedule (handlers/reminder_schedule.py)
    # Directories of message templates searched before the shipped ones (os.pathsep-separated in
    # VIGIL_MESSAGE_TEMPLATES_PATH; docs/notifications.md, "Templates").
    message_templates_path: tuple[Path, ...] = ()
    # Where a Patient resource says nothing: the language and IANA time zone of its messages,
    # reminders and quiet hours (notifications/preferences.py).
    default_locale: str = "en"
    default_time_zone: str = "UTC"
    org_name: str = "Vigil Clinic"
    # The clinic's phone number quoted in patient messages ("please call us at ..."): required by
    # every command that sends messages (Settings.require_contact_phone).
    contact_phone: str = ""
    # Where acknowledgement links point; unset, they follow the local host's address.
    public_base_url: str | None = None
    ack_token_keys: str | None = field(default=None, repr=False)  # "kid:secret[,kid:secret]"; first signs
    workflow_topic_endpoint: str | None = None  # Event Grid topic for workflow events (Azure)
    workflow_topic_key: str | None = field(default=None, repr=False)
    # Where SMS/SMTP sends are claimed before the provider is called (exactly-once sends):
    # "sqlite" (<data dir>/sends.db, one machine) or "fhir" (Basic resources in the FHIR store,
    # shared by every Functions instance). Unset: fhir with a FHIR server URL, sqlite embedded.
    send_ledger: str | None = None
    # `ACK <code>` by SMS (docs/notifications.md): this many wrong codes from one number within the
    # window lock the number out for the lockout time (no code from it is accepted, one reply).
    ack_sms_max_failures: int = 5
    ack_sms_failure_window_s: float = 900.0
    ack_sms_lockout_s: float = 3600.0
    # Retention (docs/operations.md): after how many days `vigil purge` and the daily
    # retention_purge timer remove health data no longer needed; 0 keeps it forever. Pending work
    # (undelivered bus messages) is never removed; a dead letter never replayed keeps its record
    # (reason, detail, times) and loses only its payload.
    retention_dead_letter_days: float = 30.0
    retention_outbox_days: float = 30.0
    retention_bus_days: float = 7.0  # workflow events on the local bus (`vigil events tail`)
    # A clock that stands still at this instant (ISO 8601 with offset) instead of the system
    # clock: simulations, benchmarks and tests of the local host only.
    as_of: str | None = None
    # The web console (docs/console.md): the session-signing key (default: a per-data-dir secret),
    # and whether App Service Authentication headers name the staff member ("app-service", Azure
    # only; `vigil serve` never trusts them) or console accounts do ("local").
    console_secret: str | None = field(default=None, repr=False)
    console_identity: str = "local"
    # The analytics export (docs/analytics.md, "Sources" and "Destinations"): `vigil export` and the
    # lake_export timer. The destination is a folder or a storage URL (abfss://FS@ACCOUNT.dfs.core.windows.net/
    # PATH, https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH); unset, the timer does nothing.
    export_dest: str | None = None
    export_source: str = "auto"  # auto | embedded | search | bulk (auto: embedded, or search with a FHIR URL)
    export_types: str = ""  # comma-separated resource types for a remote source (empty: all the server lists)
    export_formats: str = "ndjson,parquet"
    export_grace_s: float = 120.0  # how far behind now the timer's (and a remote export's) window ends
    export_storage_api: str | None = None  # blob | dfs, for a path-style (emulator) storage URL
    export_storage_key: str | None = field(default=None, repr=False)  # account key; else DefaultAzureCredential
    export_fhir_token: str | None = field(default=None, repr=False)  # bearer token for a remote source

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get("VIGIL_" + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.fhir_auth not in ("none", "azure"):
            raise SettingsError(f"VIGIL_FHIR_AUTH must be 'none' or 'azure', not {self.fhir_auth!r}")
        if self.fhir_url and not self.fhir_url.startswith(("http://", "https://")):
            raise SettingsError("VIGIL_FHIR_URL must start with http:// or https://")
        if self.identity_mode.lower() not in ("lookup", "create", "lookupwithencounter"):
            raise SettingsError("VIGIL_IDENTITY_MODE must be Lookup, Create or LookupWithEncounter")
        if self.event_source not in EVENT_SOURCES:
            raise SettingsError(f"VIGIL_EVENT_SOURCE must be one of {', '.join(EVENT_SOURCES)}, "
                                f"not {self.event_source!r}")
        if self.event_source == "rest-hook" and (self.embedded or not self.subscription_endpoint):
            raise SettingsError("VIGIL_EVENT_SOURCE=rest-hook needs VIGIL_FHIR_URL and VIGIL_SUBSCRIPTION_ENDPOINT "
                                "(the URL the FHIR server posts notifications to)")
        if not 1 <= self.fhir_transaction_size <= 10_000:
            raise SettingsError("VIGIL_FHIR_TRANSACTION_SIZE must be between 1 and 10000 entries")
        if not 1 <= self.workers <= 32:
            raise SettingsError(f"VIGIL_WORKERS must be between 1 and 32 (the bus's partitions), not {self.workers}")
        if self.max_message_bytes < 1024:
            raise SettingsError("VIGIL_MAX_MESSAGE_BYTES must be at least 1024")
        if self.http_idle_timeout_s <= 0 or self.http_body_timeout_s <= 0:
            raise SettingsError("VIGIL_HTTP_IDLE_TIMEOUT_S and VIGIL_HTTP_BODY_TIMEOUT_S must be positive")
        if self.http_max_body_bytes < 1024:
            raise SettingsError("VIGIL_HTTP_MAX_BODY_BYTES must be at least 1024")
        if not 0 <= self.max_future_skew_s <= 366 * 86400:
            raise SettingsError("VIGIL_MAX_FUTURE_SKEW_S must be between 0 and 31622400 seconds (366 days)")
        if self.ack_sms_max_failures < 1:
            raise SettingsError("VIGIL_ACK_SMS_MAX_FAILURES must be at least 1")
        if self.ack_sms_failure_window_s <= 0 or self.ack_sms_lockout_s <= 0:
            raise SettingsError("VIGIL_ACK_SMS_FAILURE_WINDOW_S and VIGIL_ACK_SMS_LOCKOUT_S must be positive")
        for name in ("retention_dead_letter_days", "retention_outbox_days", "retention_bus_days"):
            if getattr(self, name) < 0:
                raise SettingsError(f"VIGIL_{name.upper()} must be 0 (keep forever) or a number of days")
        if self.as_of is not None:
            try:
                parse_instant(self.as_of)
            except ValueError:
                raise SettingsError("VIGIL_AS_OF must be an ISO 8601 instant with an offset, "
                                    f"e.g. 2026-11-15T18:00:00Z, not {self.as_of!r}") from None
        if self.console_identity not in ("local", "app-service"):
            raise SettingsError(
                f"VIGIL_CONSOLE_IDENTITY must be 'local' or 'app-service', not {self.console_identity!r}"
            )
        if self.export_source not in EXPORT_SOURCES:
            raise SettingsError(f"VIGIL_EXPORT_SOURCE must be one of {', '.join(EXPORT_SOURCES)}, "
                                f"not {self.export_source!r}")
        if self.export_storage_api is not None and self.export_storage_api not in ("blob", "dfs"):
            raise SettingsError(f"VIGIL_EXPORT_STORAGE_API must be blob or dfs, not {self.export_storage_api!r}")
        if not {f.strip() for f in self.export_formats.split(",") if f.strip()} <= {"ndjson", "parquet"} \
                or not self.export_formats.strip():
            raise SettingsError(f"VIGIL_EXPORT_FORMATS must be ndjson, parquet or both, not {self.export_formats!r}")
        if self.export_grace_s < 0:
            raise SettingsError("VIGIL_EXPORT_GRACE_S must be 0 or more seconds")
        if self.send_ledger is not None and self.send_ledger.strip().lower() not in SEND_LEDGERS:
            raise SettingsError(f"VIGIL_SEND_LEDGER must be 'sqlite' or 'fhir', not {self.send_ledger!r}")

    def require_contact_phone(self) -> None:
        """Refuse to start a host that would send patients "please call us at ." (an empty slot)."""
        if not self.contact_phone.strip():
            raise SettingsError("VIGIL_CONTACT_PHONE is required: the clinic's phone number that patient "
                                "messages quote (e.g. +1-202-555-0143)")
        if sum(c.isdigit() for c in self.contact_phone) < 7:
            raise SettingsError(f"VIGIL_CONTACT_PHONE must be a phone number patients can call (at least 7 "
                                f"digits), not {self.contact_phone!r}")

    @property
    def ack_base_url(self) -> str:
        """The origin of acknowledgement links: VIGIL_PUBLIC_BASE_URL, else the local HTTP address."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::", "") else self.http_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.http_port}"

    @property
    def rules_dirs(self) -> tuple[Path, ...]:
        """Every ruleset directory in load order: the shipped library (unless left out), then
        VIGIL_RULES_PATH's directories."""
        shipped = (DEFAULT_RULES,) if self.rules_shipped else ()
        return shipped + tuple(p for p in self.rules_path if Path(p).resolve() != DEFAULT_RULES)

    @property
    def embedded(self) -> bool:
        return self.fhir_url is None

    @property
    def send_ledger_kind(self) -> str:
        """The send ledger to use: the setting, else "fhir" with a FHIR server (Azure: every instance
        must see the same claims) and "sqlite" with the embedded store."""
        if self.send_ledger:
            return self.send_ledger.strip().lower()
        return "sqlite" if self.embedded else "fhir"

    @property
    def ack_sms_limits(self) -> AckLimits:
        from notifications.ack_lockout import AckLimits

        return AckLimits(self.ack_sms_max_failures, timedelta(seconds=self.ack_sms_failure_window_s),
                         timedelta(seconds=self.ack_sms_lockout_s))

    def template_paths(self) -> tuple[Path, Path]:
        from ingest.templates.presets import preset_paths

        device, fhir = preset_paths(self.templates_preset)
        return (self.device_templates or device, self.fhir_templates or fhir)

    def retention_s(self, store: str) -> float | None:
        """Seconds a store keeps data ("dead_letter", "outbox", "bus"); None: kept forever."""
        days = float(getattr(self, f"retention_{store}_days"))
        return days * 86400 if days > 0 else None

    def path(self, name: str) -> Path:
        return Path(self.data_dir) / name


def _coerce(name: str, type_: object, raw: str) -> object:
    text = str(type_)
    if text.startswith("tuple[Path"):
        return tuple(Path(part) for part in raw.split(os.pathsep) if part.strip())
    if "Path" in text:
        return Path(raw)
    if text == "bool":
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"VIGIL_{name.upper()} must be true or false, got {raw!r}")
    try:
        if text in ("int", "<class 'int'>"):
            return int(raw)
        if text in ("float", "<class 'float'>"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"VIGIL_{name.upper()} must be a number, got {raw!r}") from None
    return raw
