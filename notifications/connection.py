"""Connection settings for the provider channels, parsed by Vigil rather than by the SDKs.

The ACS SDKs' own `from_connection_string` drops the scheme and always talks https
(azure-core's connection-string parser), which makes a loopback test server or an on-premises
gateway on another scheme unreachable. So Vigil parses `endpoint=...;accesskey=...` itself, keeps
the scheme, and hands the SDK constructor an endpoint and an `AzureKeyCredential`.

Secrets are wrapped in `Secret`: its repr and str never show the value, and no error raised here
quotes the connection string or the key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from azure.core.credentials import AzureKeyCredential

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ConnectionStringError(ValueError):
    """A connection string Vigil cannot use. The message names the part, never the secret."""


class Secret:
    """A string that does not print itself. Call `reveal()` where the value is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class AcsConnection:
    """An Azure Communication Services resource: endpoint (scheme kept, no trailing slash) and key."""

    endpoint: str
    access_key: Secret = field(repr=False)

    def credential(self) -> AzureKeyCredential:  # imported lazily: no SDK import at module load
        from azure.core.credentials import AzureKeyCredential

        return AzureKeyCredential(self.access_key.reveal())

    def __repr__(self) -> str:
        return f"AcsConnection(endpoint={self.endpoint!r}, access_key=Secret('***'))"


def parse_acs_connection_string(text: str, *, allow_insecure_http: bool = False) -> AcsConnection:
    """Parse `endpoint=https://<resource>.communication.azure.com/;accesskey=<base64>`.

    Keys are case-insensitive and may come in any order; the access key may contain '=' (base64
    padding). An endpoint without a scheme gets https. Plain http is refused unless the host is a
    loopback address (a local test server) or `allow_insecure_http` is set, because message bodies
    would otherwise cross the network in clear text.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConnectionStringError("the ACS connection string is empty")
    parts: dict[str, str] = {}
    for index, raw in enumerate(p for p in text.strip().split(";") if p.strip()):
        name, sep, value = raw.partition("=")
        if not sep:
            raise ConnectionStringError(
                f"part {index + 1} of the ACS connection string is not 'name=value'"
            )
        key = name.strip().lower()
        if key not in ("endpoint", "accesskey"):
            # Not echoed: a mistyped part may well be the key itself.
            raise ConnectionStringError(
                f"part {index + 1} of the ACS connection string is neither 'endpoint' nor 'accesskey'"
            )
        if key in parts:
            raise ConnectionStringError(f"the ACS connection string names '{key}' twice")
        parts[key] = value.strip()
    missing = [k for k in ("endpoint", "accesskey") if not parts.get(k)]
    if missing:
        raise ConnectionStringError(f"the ACS connection string has no {' and no '.join(missing)}")
    endpoint = normalize_endpoint(parts["endpoint"], what="the ACS endpoint", allow_insecure_http=allow_insecure_http)
    key = parts["accesskey"]
    try:
        # The SDK base64-decodes the key to use it as the HMAC key; fail here, with a clear message,
        # rather than on the first send.
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConnectionStringError("the ACS access key is not valid base64") from None
    return AcsConnection(endpoint=endpoint, access_key=Secret(key))


def normalize_endpoint(url: str, *, what: str, allow_insecure_http: bool = False) -> str:
    """`scheme://host[:port][/path]` without a trailing slash; https if no scheme was given.

    The ACS HMAC policy signs the endpoint's host text, so a trailing slash would end up inside
    the signed host and break every request signature.
    """
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConnectionStringError(f"{what} must use http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ConnectionStringError(f"{what} has no host")
    if parts.query or parts.fragment:
        raise ConnectionStringError(f"{what} must not carry a query or fragment")
    if parts.username or parts.password:
        raise ConnectionStringError(f"{what} must not carry credentials in the URL")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS and not allow_insecure_http:
        raise ConnectionStringError(
            f"{what} uses plain http to a non-loopback host; use https (or allow_insecure_http for a test rig)"
        )
    return url.rstrip("/")


def transport_options(*, connection_verify: bool | str, retry_total: int, timeout_s: float) -> dict[str, object]:
    """The azure-core transport options every Vigil SDK client uses (ACS SMS and Email, Event Grid).

    Status retries are off: a 429 or 5xx goes back to Vigil's own retry policy as "transient"
    (with the provider's Retry-After) instead of blocking a worker inside the SDK. Connection and
    read retries stay on: they re-send the same request, which each service de-duplicates."""
    return {"connection_verify": connection_verify, "retry_total": retry_total, "retry_status": 0,
            "connection_timeout": min(10.0, timeout_s), "read_timeout": timeout_s}
