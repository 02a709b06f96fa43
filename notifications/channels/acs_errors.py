"""The ACS answers the SMS and email adapters map the same way: throttling and unavailability.

Both services answer 429 with `Retry-After` (or `retry-after-ms`) when throttled and 5xx/408 when they
could not take the request (https://learn.microsoft.com/azure/communication-services/concepts/service-limits);
either way the message was not taken and may be sent again after the wait.
"""

from __future__ import annotations

from typing import Any

from common.retry_after import retry_after_s
from notifications.channels.base import ProviderResult


def acs_unavailable(status: int, headers: Any) -> ProviderResult | None:
    """"unavailable" for a throttled or unavailable service, with the wait it asks for; else None."""
    if status == 429:
        return ProviderResult("unavailable", reason="ACS throttled the request (HTTP 429)",
                              retry_after_s=retry_after_s(headers, 1.0), code="throttled")
    if status >= 500 or status == 408:
        return ProviderResult("unavailable", reason=f"ACS is unavailable (HTTP {status})",
                              retry_after_s=retry_after_s(headers), code="provider-error")
    return None
