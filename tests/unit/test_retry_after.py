"""The one Retry-After reader: seconds, an HTTP date, Azure's millisecond headers, and nothing readable."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from common.retry_after import retry_after_s

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def test_seconds_a_date_and_milliseconds() -> None:
    assert retry_after_s({"Retry-After": "7"}) == 7.0
    assert retry_after_s({"Retry-After": "Fri, 20 Nov 2026 15:00:30 GMT"}, now=lambda: NOW) == 30.0
    assert retry_after_s({"Retry-After": "Fri, 20 Nov 2026 14:59:00 GMT"}, now=lambda: NOW) == 0.0  # past: now
    assert retry_after_s({"x-ms-retry-after-ms": "1500", "Retry-After": "9"}) == 1.5  # the finer one wins


def test_case_insensitive_headers_as_httpx_gives_them() -> None:
    assert retry_after_s(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after_s(httpx.Headers({"Retry-After-Ms": "250"})) == 0.25


def test_nothing_readable_is_the_default() -> None:
    assert retry_after_s(None) is None
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}, default=1.0) == 1.0
