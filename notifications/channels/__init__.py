"""Build the configured channels from a plain mapping (settings, YAML or JSON).

    {
      "sms":    {"type": "acs_sms", "connection_string": "endpoint=https://x.communication.azure.com/;accesskey=...",
                 "from": "+18005550100"},
      "email":  {"type": "acs_email", "connection_string": "...", "sender": "DoNotReply@mail.example.org"},
      "smtp":   {"type": "smtp", "host": "relay.hospital.local", "port": 587, "security": "starttls",
                 "sender": "rpm@hospital.example", "username": "rpm", "password": "..."},
      "outbox": {"type": "outbox", "directory": ".vigil/outbox"}
    }

The key is the channel name that messages and recipient preferences refer to. SDKs are imported
only when a channel of their type is built (no I/O or heavy imports at module load). Errors name
the channel and the field, never a secret's value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.clock import Clock
from notifications.channels.base import Channel, OptOutChecker
from notifications.channels.ledger import SendLedger
from notifications.connection import ConnectionStringError, Secret


class ChannelConfigError(ValueError):
    """A channel configuration Vigil cannot use; names the channel and the field."""


_KNOWN_FIELDS: dict[str, set[str]] = {
    "acs_sms": {"type", "connection_string", "from", "delivery_reports", "connection_verify", "retry_total",
                "timeout_s", "default_region", "allow_insecure_http"},
    "acs_email": {"type", "connection_string", "sender", "wait_for_result", "polling_interval",
                  "connection_verify", "retry_total", "timeout_s", "default_subject", "allow_insecure_http"},
    "smtp": {"type", "host", "port", "sender", "username", "password", "security", "timeout_s", "ca_file",
             "default_subject"},
    "outbox": {"type", "directory"},
}


def build_channels(
    config: Mapping[str, Mapping[str, Any]],
    *,
    ledger: SendLedger | None = None,
    opt_outs: OptOutChecker | None = None,
    clock: Clock | None = None,
    base_dir: Path | None = None,
) -> dict[str, Channel]:
    """One channel per entry. `ledger` is required by the non-idempotent channels (acs_sms, smtp);
    `opt_outs` (an `SmsConsentRegistry`) is checked by SMS channels before every send."""
    channels: dict[str, Channel] = {}
    for name, entry in config.items():
        if not isinstance(entry, Mapping):
            raise ChannelConfigError(f"channel {name!r}: expected a mapping of settings")
        kind = entry.get("type")
        builder = _BUILDERS.get(str(kind))
        if builder is None:
            raise ChannelConfigError(
                f"channel {name!r}: unknown type {kind!r} (expected one of {', '.join(sorted(_BUILDERS))})"
            )
        unknown = set(entry) - _KNOWN_FIELDS[str(kind)]
        if unknown:
            raise ChannelConfigError(f"channel {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
        try:
            channels[name] = builder(name, entry, ledger=ledger, opt_outs=opt_outs, clock=clock, base_dir=base_dir)
        except ConnectionStringError as exc:
            raise ChannelConfigError(f"channel {name!r}: connection_string: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, ChannelConfigError):
                raise
            raise ChannelConfigError(f"channel {name!r}: {exc}") from None
    return channels


def _require(name: str, entry: Mapping[str, Any], field: str) -> Any:
    value = entry.get(field)
    if value in (None, ""):
        raise ChannelConfigError(f"channel {name!r}: {field!r} is required")
    return value


def _secret_text(value: Any) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _need_ledger(name: str, ledger: SendLedger | None) -> SendLedger:
    if ledger is None:
        raise ChannelConfigError(
            f"channel {name!r}: needs a send ledger "
            "(this provider is not idempotent; see notifications.channels.ledger)"
        )
    return ledger


def _acs_sms(name: str, entry: Mapping[str, Any], *, ledger, opt_outs, clock, base_dir) -> Channel:
    from notifications.channels.acs_sms import AcsSmsChannel
    from notifications.connection import parse_acs_connection_string

    connection = parse_acs_connection_string(
        _secret_text(_require(name, entry, "connection_string")),
        allow_insecure_http=bool(entry.get("allow_insecure_http", False)),
    )
    return AcsSmsChannel(
        connection,
        str(_require(name, entry, "from")),
        ledger=_need_ledger(name, ledger),
        opt_outs=opt_outs,
        name=name,
        clock=clock,
        delivery_reports=bool(entry.get("delivery_reports", True)),
        connection_verify=entry.get("connection_verify", True),
        retry_total=int(entry.get("retry_total", 2)),
        timeout_s=float(entry.get("timeout_s", 30.0)),
        default_region=str(entry.get("default_region", "US")),
    )


def _acs_email(name: str, entry: Mapping[str, Any], *, ledger, opt_outs, clock, base_dir) -> Channel:
    from notifications.channels.acs_email import AcsEmailChannel
    from notifications.connection import parse_acs_connection_string

    connection = parse_acs_connection_string(
        _secret_text(_require(name, entry, "connection_string")),
        allow_insecure_http=bool(entry.get("allow_insecure_http", False)),
    )
    return AcsEmailChannel(
        connection,
        str(_require(name, entry, "sender")),
        name=name,
        ledger=ledger,
        clock=clock,
        wait_for_result=bool(entry.get("wait_for_result", False)),
        polling_interval=float(entry.get("polling_interval", 5.0)),
        connection_verify=entry.get("connection_verify", True),
        retry_total=int(entry.get("retry_total", 2)),
        timeout_s=float(entry.get("timeout_s", 30.0)),
        default_subject=str(entry.get("default_subject", "A message from your care team")),
    )


def _smtp(name: str, entry: Mapping[str, Any], *, ledger, opt_outs, clock, base_dir) -> Channel:
    from notifications.channels.smtp import SmtpChannel

    try:
        port = int(entry.get("port", 587))
    except (TypeError, ValueError):
        raise ChannelConfigError(f"channel {name!r}: 'port' must be a number") from None
    password = entry.get("password")
    return SmtpChannel(
        str(_require(name, entry, "host")),
        port,
        str(_require(name, entry, "sender")),
        ledger=_need_ledger(name, ledger),
        name=name,
        username=entry.get("username") or None,
        password=None
        if password in (None, "")
        else (password if isinstance(password, Secret) else Secret(str(password))),
        security=entry.get("security", "starttls"),
        clock=clock,
        timeout_s=float(entry.get("timeout_s", 30.0)),
        ca_file=entry.get("ca_file"),
        default_subject=str(entry.get("default_subject", "A message from your care team")),
    )


def _outbox(name: str, entry: Mapping[str, Any], *, ledger, opt_outs, clock, base_dir) -> Channel:
    from notifications.channels.outbox import OutboxChannel

    directory = Path(str(entry.get("directory") or "outbox"))
    if not directory.is_absolute() and base_dir is not None:
        directory = Path(base_dir) / directory
    # An outbox standing in for SMS keeps the SMS rules: no text to a number that said STOP.
    channel = OutboxChannel(directory, opt_outs=opt_outs if name == "sms" else None)
    channel.name = name
    return channel


_BUILDERS: dict[str, Callable[..., Channel]] = {
    "acs_sms": _acs_sms,
    "acs_email": _acs_email,
    "smtp": _smtp,
    "outbox": _outbox,
}
