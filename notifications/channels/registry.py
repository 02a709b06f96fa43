"""Build the configured channels from a plain mapping (settings, YAML or JSON).

    {
      "sms":    {"type": "acs_sms", "connection_string": "endpoint=https://x.communication.azure.com/;accesskey=...",
                 "from": "+18005550100"},
      "email":  {"type": "acs_email", "connection_string": "...", "sender": "DoNotReply@mail.example.org"},
      "smtp":   {"type": "smtp", "host": "relay.hospital.local", "port": 587, "security": "starttls",
                 "sender": "rpm@hospital.example", "username": "rpm", "password": "..."},
      "outbox": {"type": "outbox", "directory": ".vigil/outbox"}
    }

The key is the channel's *name*: what the send ledger keys its claims by and what a message may
name directly. Its *kind* (`sms`, `email`, `file`) selects the template kind and the address rules;
it is the entry's `kind`, else the name when the provider carries a kind of that name, else the
provider's first kind. Messages ask for a kind (a recipient's contact says sms or email), so the
result also answers to each kind that no channel is named after, with the first channel of that
kind in configuration order: `{"acs-sms": ..., "backup-sms": ...}` sends kind sms through
`acs-sms`, and `backup-sms` by its name.

A provider is one module with a `SPEC` (`notifications.channels.config.ProviderSpec`) and one line
in `PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.clock import Clock, SystemClock
from notifications.channels import acs_email, acs_sms, outbox, smtp
from notifications.channels.base import CHANNEL_KINDS, Channel, ChannelKind, OptOutChecker
from notifications.channels.config import PIPELINE_FIELDS, BuildContext, ChannelConfigError, ProviderSpec
from notifications.channels.ledger import SendLedger
from notifications.channels.pipeline import GuardedChannel, MissingLedger
from notifications.connection import ConnectionStringError

PROVIDERS: dict[str, ProviderSpec] = {
    "acs_sms": acs_sms.SPEC,
    "acs_email": acs_email.SPEC,
    "smtp": smtp.SPEC,
    "outbox": outbox.SPEC,
}
# The kinds a message asks for by kind (a contact's); each gets a route when no channel has its name.
ROUTED_KINDS: tuple[ChannelKind, ...] = ("sms", "email")


def build_channels(
    config: Mapping[str, Mapping[str, Any]],
    *,
    ledger: SendLedger | None = None,
    opt_outs: OptOutChecker | None = None,
    clock: Clock | None = None,
    base_dir: Path | None = None,
) -> dict[str, Channel]:
    """One guarded channel per entry, plus a route per kind (see above). `ledger` is required by
    providers that are not idempotent (acs_sms, smtp); `opt_outs` (an `SmsConsentRegistry`) is
    checked before every SMS."""
    context = BuildContext(clock or SystemClock(), base_dir)
    channels: dict[str, Channel] = {}
    by_kind: dict[str, Channel] = {}
    for name, entry in config.items():
        channel = _build(name, entry, context, ledger, opt_outs)
        channels[name] = channel
        by_kind.setdefault(channel.kind, channel)
    for kind in ROUTED_KINDS:
        if kind not in channels and kind in by_kind:
            channels[kind] = by_kind[kind]
    return channels


def _build(name: str, entry: Any, context: BuildContext, ledger: SendLedger | None,
           opt_outs: OptOutChecker | None) -> GuardedChannel:
    if not isinstance(entry, Mapping):
        raise ChannelConfigError(f"channel {name!r}: expected a mapping of settings")
    provider_type = str(entry.get("type"))
    spec = PROVIDERS.get(provider_type)
    if spec is None:
        raise ChannelConfigError(
            f"channel {name!r}: unknown type {entry.get('type')!r} (expected one of {', '.join(sorted(PROVIDERS))})"
        )
    unknown = set(entry) - spec.fields - PIPELINE_FIELDS
    if unknown:
        raise ChannelConfigError(f"channel {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
    kind = _kind(name, entry, provider_type, spec)
    try:
        provider = spec.build(name, entry, context)
        return GuardedChannel(name, kind, provider, ledger=ledger, opt_outs=opt_outs, clock=context.clock,
                              default_region=str(entry.get("default_region", "US")))
    except MissingLedger as exc:
        raise ChannelConfigError(str(exc)) from None
    except ConnectionStringError as exc:
        raise ChannelConfigError(f"channel {name!r}: connection_string: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, ChannelConfigError):
            raise
        raise ChannelConfigError(f"channel {name!r}: {exc}") from None


def _kind(name: str, entry: Mapping[str, Any], provider_type: str, spec: ProviderSpec) -> ChannelKind:
    wanted = entry.get("kind")
    if wanted is None:
        return next((k for k in spec.kinds if k == name), spec.kinds[0])
    for kind in CHANNEL_KINDS:
        if kind == wanted and kind in spec.kinds:
            return kind
    raise ChannelConfigError(f"channel {name!r}: 'kind' must be one of {', '.join(spec.kinds)} for a "
                             f"{provider_type} channel, not {wanted!r}")
