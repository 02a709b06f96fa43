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

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules" / "library"
DEFAULT_CHAINS = Path(__file__).resolve().parent.parent / "notifications" / "chains.yaml"
SEND_LEDGERS = ("sqlite", "fhir")


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
    rules_path: Path = DEFAULT_RULES  # a directory of ruleset YAML files
    max_message_bytes: int = 256 * 1024
    # Readings dated more than this after they arrived are dead-lettered (`future_reading`):
    # a wrong device clock, not a reading (ingest/reading_time.py).
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
    program_contact: str = "your care team"
    staff_address: str = "care-team"
    # Notifications (docs/notifications.md). Without a channels file, "sms" and "email" are the
    # file outbox under the data directory (the embedded default).
    channels_config: Path | None = None  # JSON or YAML mapping of channel name -> settings
    escalation_chains: Path = DEFAULT_CHAINS
    org_name: str = "Vigil Clinic"
    contact_phone: str = ""
    public_base_url: str = "http://127.0.0.1:7071"  # where acknowledgement links point
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
    # The web console (docs/console.md): the session-signing key (default: a per-data-dir secret),
    # and whether App Service Authentication headers name the staff member ("app-service", Azure
    # only; `vigil serve` never trusts them) or console accounts do ("local").
    console_secret: str | None = field(default=None, repr=False)
    console_identity: str = "local"

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
        if self.console_identity not in ("local", "app-service"):
            raise SettingsError(f"VIGIL_CONSOLE_IDENTITY must be 'local' or 'app-service', not {self.console_identity!r}")
        if self.send_ledger is not None and self.send_ledger.strip().lower() not in SEND_LEDGERS:
            raise SettingsError(f"VIGIL_SEND_LEDGER must be 'sqlite' or 'fhir', not {self.send_ledger!r}")

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

    def path(self, name: str) -> Path:
        return Path(self.data_dir) / name


def _coerce(name: str, type_: object, raw: str) -> object:
    text = str(type_)
    try:
        if "Path" in text:
            return Path(raw)
        if text in ("int", "<class 'int'>"):
            return int(raw)
        if text in ("float", "<class 'float'>"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"VIGIL_{name.upper()} must be a number, got {raw!r}") from None
    return raw
