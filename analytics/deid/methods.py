"""The anonymizer's methods on single values (docs/FHIR-anonymization.md, "Anonymization methods").

Behaviour follows the anonymizer where it is specified; where Vigil differs it says so here and in
docs/analytics.md:

- ``dateshift`` never shifts by zero days (a zero shift would publish the true date): the offset is one of
  -50..-1, 1..50, from HMAC-SHA256(dateShiftKey, scope) (the anonymizer hashes the same inputs, into -50..50).
- ``dateShiftKeepTime`` (Vigil extension): keep the time of day instead of zeroing it.
- ``perturb`` draws its noise from a generator seeded with HMAC(cryptoHashKey, value and place), so a run with
  configured keys is repeatable (the anonymizer draws fresh noise each time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import re
from datetime import date, datetime, timedelta

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_DATE = re.compile(r"^(\d{4})(-(\d{2})(-(\d{2}))?)?$")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def crypto_hash(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def hash_reference(key: str, reference: str) -> str:
    """``Patient/123`` -> ``Patient/<hash of 123>``, so references still join with hashed ids."""
    parts = reference.split("/")
    if len(parts) >= 2 and not reference.startswith(("urn:", "#")):
        if len(parts) >= 4 and parts[-2] == "_history":
            return "/".join([*parts[:-4], parts[-4], crypto_hash(key, parts[-3]), "_history", parts[-1]])
        return "/".join([*parts[:-1], crypto_hash(key, parts[-1])])
    return crypto_hash(key, reference)


def encrypt(key: str, value: str) -> str:
    """AES-CBC with a random IV (prepended), Base64; the key is the UTF-8 bytes of ``encryptKey``."""
    raw = key.encode()
    if len(raw) not in (16, 24, 32):
        raise ValueError("encryptKey must be 128, 192 or 256 bits (16, 24 or 32 bytes)")
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(value.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(raw), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + enc.update(data) + enc.finalize()).decode()


def shift_days(key: str, scope: str, fixed: int | None = None) -> int:
    if fixed is not None:
        return fixed
    n = int.from_bytes(hmac.new(key.encode(), scope.encode(), hashlib.sha256).digest()[:4], "big") % 100
    return n - 50 if n < 50 else n - 49  # -50..-1, 1..50


def indicates_age_over_89(year: int, today: date | None = None) -> bool:
    # As the anonymizer: measured from now, not from the patient's birth date.
    return (today or date.today()).year - year > 89


def redact_date(value: str, partial: bool) -> str | None:
    """Year only when partial dates are enabled and the year does not indicate an age over 89; else nothing."""
    m = re.match(r"^(\d{4})", value)
    if not partial or not m or indicates_age_over_89(int(m.group(1))):
        return None
    return m.group(1)


def shift_date(value: str, days: int, keep_time: bool, partial: bool) -> str | None:
    """A date/dateTime/instant moved by ``days``; one without a day (``2024-05``) is redacted instead."""
    m = _DATE.match(value)
    if m:
        if not m.group(5) or indicates_age_over_89(int(m.group(1))):
            return redact_date(value, partial)
        return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    m = _DATETIME.match(value)
    if not m or indicates_age_over_89(int(m.group(1))):
        return redact_date(value, partial)
    day = date(int(m.group(1)), int(m.group(2)), int(m.group(3))) + timedelta(days=days)
    rest = value[10:]
    if not keep_time:
        # The anonymizer keeps the time zone and sets every time digit to 0.
        rest = re.sub(r"\d", "0", rest[: len(rest) - len(m.group(8) or "")]) + (m.group(8) or "")
    return day.isoformat() + rest


def redact_postal_code(value: str, partial: bool, restricted: list[str]) -> str | None:
    if not partial:
        return None
    digits = re.sub(r"\D", "", value)
    if len(digits) < 3:
        return None
    if any(value.startswith(prefix) for prefix in restricted):
        return re.sub(r"\d", "0", value)
    return value[:3] + re.sub(r"\d", "0", value[3:])


def perturb(value: float, span: float, range_type: str, round_to: int | None, seed: str, integer: bool) -> float | int:
    rng = random.Random(seed)
    width = span if range_type == "fixed" else span * abs(value)
    noisy = value + rng.uniform(-width / 2, width / 2)
    digits = round_to if round_to is not None else (0 if integer else 2)
    out = round(noisy, digits)
    return int(out) if digits == 0 and integer else out


def is_date_type(ftype: str | None) -> bool:
    return ftype in ("date", "dateTime", "instant")


def parse_instant(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
