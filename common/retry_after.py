"""How long a server asks a client to wait before trying again.

`Retry-After` is seconds or an HTTP date (RFC 9110 §10.2.3); Azure services also send the wait in
milliseconds as `retry-after-ms` or `x-ms-retry-after-ms`
(https://learn.microsoft.com/azure/architecture/best-practices/retry-service-specific). One reader for
every client Vigil has: the FHIR HTTP adapter, the export's FHIR client, the ACS and Event Grid adapters.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def retry_after_s(headers: Any, default: float | None = None,
                  now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds to wait from `headers` (anything with `.get`, case-insensitive ones included), or
    `default` when they ask for nothing readable. `now` reads the time an HTTP date is measured from
    (the wall clock by default: the date is the server's)."""
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
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # an HTTP date is always GMT (RFC 9110 §5.6.7)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
