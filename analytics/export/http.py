"""GET requests to a FHIR server for the remote export sources, retried with tenacity.

Every request here is a read (a search page, a history page, a bulk status poll, a file download; a bulk
kick-off at worst starts a second job), so any transient answer may be retried: connection failures,
timeouts, 429 and 502/503/504. A 429 or 503 with ``Retry-After`` (seconds or an HTTP date, RFC 9110
§10.2.3) waits that long, capped; otherwise exponential backoff with jitter
(https://tenacity.readthedocs.io/en/latest/api.html#wait-functions). Anything else fails at once with the
status and the server's first diagnostics line, never the URL's query (it may hold a patient id) or a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from common.retry_after import retry_after_s
from fhirstore.http_transport import redact_httpx_request_log

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_TRANSIENT = frozenset({429, 502, 503, 504})


class RemoteError(RuntimeError):
    """A FHIR server answer the export cannot use (after retries, for transient ones)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _where(url: str) -> str:
    """The request as it may appear in a message: the path only (queries can name patients)."""
    return urlsplit(url).path or "/"


class FhirHttp:
    """An httpx client for one FHIR base URL; `token` gives a bearer token per request (or None)."""

    def __init__(self, base_url: str, *, token: Callable[[], str | None] | None = None, timeout: float = 60.0,
                 attempts: int = 6, max_wait_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 client: httpx.Client | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the FHIR base URL must be http(s)://host/..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._owns = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)
        self.max_wait_s = max_wait_s
        self._retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            stop=stop_after_attempt(attempts),
            sleep=sleep,
            reraise=True,
            before_sleep=self._log_retry,
        )
        self._backoff = wait_random_exponential(multiplier=0.5, max=max_wait_s)
        self.requests = 0
        # httpx logs every request's URL at INFO; search queries can name patients (the HTTP adapter's filter).
        redact_httpx_request_log()

    def close(self) -> None:
        if self._owns:
            self._client.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def get(self, path: str, *, params: list[tuple[str, str]] | None = None,
            headers: dict[str, str] | None = None, ok: frozenset[int] = frozenset({200})) -> httpx.Response:
        """GET `path` (relative to the base, or an absolute URL such as a `next` link); a response whose
        status is in `ok`, else RemoteError."""
        url = self.url(path)
        try:
            return self._retrying(self._once, url, params, headers, ok)
        except _Transient as exc:
            raise RemoteError(f"{exc} (gave up after retries)") from None

    def delete(self, path: str) -> None:
        """DELETE `path` once (cleaning up, e.g. a finished bulk job); 2xx or 404, else RemoteError."""
        url = self.url(path)
        token = self._token() if self._token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self._client.delete(url, headers=headers)
        except httpx.TransportError as exc:
            raise RemoteError(f"DELETE {_where(url)}: {type(exc).__name__}") from None
        if response.status_code >= 300 and response.status_code != 404:
            raise RemoteError(f"DELETE {_where(url)}: HTTP {response.status_code}", response.status_code)

    def _once(self, url: str, params: Any, headers: dict[str, str] | None,
              ok: frozenset[int]) -> httpx.Response:
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        token = self._token() if self._token else None
        if token:
            sent["Authorization"] = f"Bearer {token}"
        self.requests += 1
        try:
            response = self._client.get(url, params=params, headers=sent)
        except httpx.TransportError as exc:
            raise _Transient(f"GET {_where(url)}: {type(exc).__name__}", None) from None
        if response.status_code in ok:
            return response
        if response.status_code in _TRANSIENT:
            hinted = retry_after_s(response.headers) if response.status_code in (429, 503) else None
            raise _Transient(f"GET {_where(url)}: HTTP {response.status_code}", hinted)
        detail = _diagnostics(response, token)
        raise RemoteError(f"GET {_where(url)}: HTTP {response.status_code}{': ' + detail if detail else ''}",
                          response.status_code)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = exc.retry_after if isinstance(exc, _Transient) else None
        if hinted is not None:
            return min(hinted, self.max_wait_s)
        return float(self._backoff(state))

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s, retry %d in %.2fs", exc, state.attempt_number, wait)

    def json(self, path: str, *, params: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        response = self.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            raise RemoteError(f"GET {_where(self.url(path))}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise RemoteError(f"GET {_where(self.url(path))}: the answer is not a JSON object")
        return body


def _diagnostics(response: httpx.Response, token: str | None) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    issues = body.get("issue") if isinstance(body, dict) else None
    if not isinstance(issues, list):
        return ""
    for issue in issues:
        if isinstance(issue, dict):
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if isinstance(text, str) and text:
                text = text.splitlines()[0][:300]
                return text.replace(token, "[redacted]") if token else text
    return ""
