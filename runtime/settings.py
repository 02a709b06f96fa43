"""One typed settings object, read from the environment (Functions app settings or a shell).

Every setting is documented in local.settings.example.json. Secrets are read here and nowhere
else, and `Settings.__repr__` never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.clock import parse_instant

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
    # Ingest mapping: MedTech-compatible template files, or a shipped preset (ingest/presets).
    templates_preset: str = "vigil-generic"
    device_templates: Path | None = None  # overrides the preset's device mapping file
    fhir_templates: Path | None = None  # overrides the preset's FHIR mapping file
    identity_mode: str = "Lookup"  # Lookup | Create | LookupWithEncounter (as in MedTech)
    device_identifier_system: str | None = None
    event_hub_name: str = "device-messages"
    http_host: str = "127.0.0.1"
    http_port: int = 7071
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
        for name in ("retention_dead_letter_days", "retention_outbox_days", "retention_bus_days"):
            if getattr(self, name) < 0:
                raise SettingsError(f"VIGIL_{name.upper()} must be 0 (keep forever) or a number of days")
        if self.as_of is not None:
            try:
                parse_instant(self.as_of)
            except ValueError:
                raise SettingsError("VIGIL_AS_OF must be an ISO 8601 instant with an offset, "
                                    f"e.g. 2026-11-15T18:00:00Z, not {self.as_of!r}") from None
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
