"""Signed, expiring, single-use tokens for links in messages (acknowledge an alert, open a check-in).

    token = base64url(payload) "." base64url(HMAC-SHA256(key, "vigil-token-v1|" + payload)[:16])
    payload = "1|<key id>|<purpose>|<subject>|<actor>|<expiry, unix seconds, base 36>|<token id>"

The claims ride in the token, so checking one needs no lookup; the key id inside the signed
payload lets keys rotate (old keys verify, the current key signs). The MAC is truncated to 128
bits to keep SMS links short; forging still needs 2^128 guesses per attempt. The token names
references only (e.g. `Task/…`, `Practitioner/…`), never a name or number, since URLs end up in
proxy logs and browser history.

Single use needs a durable record of spent token ids (`UsedTokenStore`): `FhirUsedTokens`
(a conditional create in the FHIR store, shared by every instance), or `LedgerUsedTokens` over a
send ledger (the embedded SQLite file). Refusals are distinct: `TokenForged` (malformed, unknown
key, bad signature), `TokenWrongPurpose`, `TokenExpired`, `TokenReused`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from common.clock import Clock, iso
from common.codes import vigil_system
from fhirstore.port import FhirStore
from notifications.channels.ledger import SendLedger
from notifications.connection import Secret

_DOMAIN = b"vigil-token-v1|"
_DERIVE_DOMAIN = b"vigil-derive-v1|"  # keyed digests that are not tokens (see SignedTokens.derive)
_MAC_BYTES = 16
MIN_KEY_BYTES = 32
DEFAULT_TTL = timedelta(hours=24)
USED_TOKEN_SYSTEM = vigil_system("used-token")


class TokenError(Exception):
    """A token was refused. `code` is stable for callers (HTTP handlers map it to a page)."""

    code = "invalid"


class TokenForged(TokenError):
    code = "forged"


class TokenWrongPurpose(TokenError):
    code = "wrong-purpose"


class TokenExpired(TokenError):
    code = "expired"


class TokenReused(TokenError):
    code = "reused"


@dataclass(frozen=True)
class TokenClaims:
    purpose: str
    subject: str
    actor: str | None
    expires_at: datetime
    token_id: str
    key_id: str


class UsedTokenStore(Protocol):
    def mark_used(self, token_id: str, expires_at: datetime, now: datetime) -> bool:
        """Record the token as spent. True the first time, False if it was already spent."""
        ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _unb64(text: str) -> bytes:
    """Strict, canonical base64url (RFC 4648 §5, unpadded, as `_b64` writes it).

    Python's decoder is lenient: it accepts padding, drops characters outside the alphabet and
    ignores the unused low bits of the last character, so one MAC would have many spellings and
    a link could be altered and still verify. Only the one spelling `_b64` produces is accepted:
    decode, re-encode, compare (RFC 4648 §3.5 lets a decoder reject non-zero pad bits)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _to36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


class SignedTokens:
    """Issue and check tokens. `keys` maps key id → secret (≥ 32 bytes); `current` signs."""

    def __init__(
        self,
        keys: Mapping[str, Secret | str | bytes],
        *,
        current: str,
        used: UsedTokenStore,
        clock: Clock,
        default_ttl: timedelta = DEFAULT_TTL,
    ) -> None:
        if current not in keys:
            raise ValueError(f"the current token key id {current!r} is not among the configured keys")
        self._keys: dict[str, bytes] = {}
        for kid, key in keys.items():
            if not kid or "|" in kid:
                raise ValueError("a token key id must be non-empty and must not contain '|'")
            raw = key.reveal().encode() if isinstance(key, Secret) else key.encode() if isinstance(key, str) else key
            if len(raw) < MIN_KEY_BYTES:
                raise ValueError(f"token key {kid!r} is too short: use at least {MIN_KEY_BYTES} random bytes")
            self._keys[kid] = bytes(raw)
        self.current = current
        self.used = used
        self.clock = clock
        self.default_ttl = default_ttl

    def __repr__(self) -> str:
        return f"SignedTokens(keys={sorted(self._keys)}, current={self.current!r})"

    def _mac(self, kid: str, payload: bytes) -> bytes:
        return hmac.new(self._keys[kid], _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def derive(self, label: str) -> bytes:
        """A keyed digest of `label` with the current key, for short secrets derived from an id
        (an SMS acknowledgement code). Its own domain: it can never equal a token's MAC."""
        return hmac.new(self._keys[self.current], _DERIVE_DOMAIN + label.encode(), hashlib.sha256).digest()

    def issue(self, *, purpose: str, subject: str, actor: str | None = None, ttl: timedelta | None = None) -> str:
        for name, value in (("purpose", purpose), ("subject", subject), ("actor", actor or "")):
            if "|" in value:
                raise ValueError(f"token {name} must not contain '|'")
        if not purpose or not subject:
            raise ValueError("a token needs a purpose and a subject")
        expires = self.clock.now() + (ttl or self.default_ttl)
        token_id = _b64(secrets.token_bytes(9))
        payload = "|".join(
            ["1", self.current, purpose, subject, actor or "", _to36(int(expires.timestamp())), token_id]
        )
        data = payload.encode()
        return f"{_b64(data)}.{_b64(self._mac(self.current, data))}"

    def verify(self, token: str, *, purpose: str) -> TokenClaims:
        """The claims of a genuine, unexpired token for `purpose`. Does not spend it."""
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 1024:
            raise TokenForged("the link is not a valid Vigil link")
        body, mac_text = token.split(".")
        try:
            data, mac = _unb64(body), _unb64(mac_text)
            fields = data.decode().split("|")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise TokenForged("the link is not a valid Vigil link") from None
        if len(fields) != 7 or fields[0] != "1" or len(mac) != _MAC_BYTES:
            raise TokenForged("the link is not a valid Vigil link")
        _, kid, token_purpose, subject, actor, exp36, token_id = fields
        if kid not in self._keys:
            raise TokenForged("the link was not signed by this Vigil installation (unknown key)")
        if not hmac.compare_digest(self._mac(kid, data), mac):
            raise TokenForged("the link's signature does not match: it was altered or not issued by Vigil")
        if token_purpose != purpose:
            raise TokenWrongPurpose(f"the link is for {token_purpose!r}, not {purpose!r}")
        try:
            # Only the spelling `_to36` writes: `int(…, 36)` would also take upper case, signs,
            # spaces and underscores (the MAC covers the payload, this keeps the check exact).
            if _to36(int(exp36, 36)) != exp36:
                raise ValueError(exp36)
            expires = datetime.fromtimestamp(int(exp36, 36), UTC)
        except (ValueError, OverflowError, OSError):
            raise TokenForged("the link is not a valid Vigil link") from None
        if self.clock.now() >= expires:
            raise TokenExpired(f"the link expired at {iso(expires)}")
        return TokenClaims(token_purpose, subject, actor or None, expires, token_id, kid)

    def consume(self, claims: TokenClaims) -> None:
        """Spend a verified token; TokenReused if it was spent before."""
        if not self.used.mark_used(claims.token_id, claims.expires_at, self.clock.now()):
            raise TokenReused("the link was already used")

    def redeem(self, token: str, *, purpose: str) -> TokenClaims:
        """verify + consume in one step."""
        claims = self.verify(token, purpose=purpose)
        self.consume(claims)
        return claims


class MemoryUsedTokens:
    """For tests: not durable."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def mark_used(self, token_id: str, expires_at: datetime, now: datetime) -> bool:
        if token_id in self._used:
            return False
        self._used.add(token_id)
        return True


class LedgerUsedTokens:
    """Spent token ids in a send ledger (the embedded SQLite file): one atomic claim each."""

    def __init__(self, ledger: SendLedger) -> None:
        self.ledger = ledger

    def mark_used(self, token_id: str, expires_at: datetime, now: datetime) -> bool:
        key = f"token:{token_id}"
        claim = self.ledger.claim(key, now)
        if claim.state != "new":
            return False
        self.ledger.mark_sent(key, None, now)
        return True


class FhirUsedTokens:
    """Spent token ids as `Basic` resources, created with `If-None-Exist` on the token id: the
    first create wins on every instance. (A cleanup job may delete those past `expires`.)"""

    def __init__(self, store: FhirStore) -> None:
        self.store = store

    def mark_used(self, token_id: str, expires_at: datetime, now: datetime) -> bool:
        resource = {
            "resourceType": "Basic",
            "identifier": [{"system": USED_TOKEN_SYSTEM, "value": token_id}],
            "code": {"coding": [{"system": vigil_system("record-kind"), "code": "used-token"}]},
            "created": now.astimezone(UTC).date().isoformat(),
            "extension": [{"url": vigil_system("token-expires"), "valueDateTime": iso(expires_at)}],
        }
        result = self.store.create(resource, if_none_exist=f"identifier={USED_TOKEN_SYSTEM}|{token_id}")
        return result.outcome == "created"
