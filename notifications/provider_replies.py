"""Reading a provider's reply safely: error text with numbers masked.

Every provider adapter (SMS, email, SMTP), the workflow-event publisher and the delivery-report
handling keep a provider's own words as the reason on a Communication or in an error. Those words
can echo the recipient's phone number, so they pass through `scrub` before they are stored or
logged.
How long a reply asks to wait is read by `common.retry_after`.
"""

from __future__ import annotations

import re

# A run of digits with phone punctuation: long enough to be a number, too long to be a status code.
_DIGIT_RUN = re.compile(r"\+?\d[\d\s().-]{5,}\d")


def scrub(text: str | None, limit: int = 300) -> str:
    """A provider's error text, safe to store and log: digit runs (phone numbers) masked, bounded."""
    if not text:
        return ""
    return " ".join(_DIGIT_RUN.sub("<number>", str(text)).split())[:limit]
