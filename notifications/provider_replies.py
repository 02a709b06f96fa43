"""Reading a provider's reply safely: error text with numbers masked, and when to try again.

Every provider adapter (SMS, email, SMTP), the workflow-event publisher and the delivery-report
handling keep a provider's own words as the reason on a Communication or in an error. Those words
can echo the recipient's phone number, so they pass through `scrub` before they are stored or
logged. `retry_after_from` reads the wait a throttling Azure service asks for.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# A run of digits with phone punctuation: long enough to be a number, too long to be a status code.
_DIGIT_RUN = re.compile(r"\+?\d[\d\s().-]{5,}\d")


def scrub(text: str | None, limit: int = 300) -> str:
    """A provider's error text, safe to store and log: digit runs (phone numbers) masked, bounded."""
    if not text:
        return ""
    return " ".join(_DIGIT_RUN.sub("<number>", str(text)).split())[:limit]


def retry_after_from(headers: Any, default: float | None = None,
                     now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `x-ms-retry-after-ms` or `Retry-After` (seconds or an
    HTTP date, RFC 9110 §10.2.3), as Azure services send them. `now` reads the time an HTTP date is
    measured from (the wall clock by default: the date is the server's)."""
    if headers is None:
        return default
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
