"""HTTP for the FHIR adapter: auth, retries and error mapping (`fhirstore.http_store` on top).

Tokens come from an `azure-identity` credential. Retries are limited to what is safe to repeat: a
plain create (POST without If-None-Exist) and a transaction may already have been applied when a
gateway answers 502/503/504 or a read times out, so those only retry 429 and connection failures.
Request values never reach logs or error messages: search values can identify a patient.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from azure.core.credentials import AccessToken, TokenCredential

from common import jsonnum
from common.retry_after import retry_after_s
from fhirstore.errors import FhirError, ServerError, Unauthorized, error_for_status
from fhirstore.port import Resource

logger = logging.getLogger("fhirstore.http_store")

FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Refresh before expiry so a request never leaves with a token that lapses in flight.
_TOKEN_REFRESH_MARGIN_S = 300
# Exceptions raised before any byte of the request reached the server: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class HttpTransport:
    """Requests to one FHIR base URL with a bearer token, bounded retries and typed errors."""

    def __init__(
        self,
        base_url: str,
        *,
        credential: TokenCredential | None = None,
        scope: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"FHIR base_url must be an http(s) URL without a query, got {base_url!r}")
        if max_retries < 0 or backoff_base < 0 or backoff_max < 0 or timeout <= 0:
            raise ValueError("max_retries, backoff_base and backoff_max must be >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self._credential = credential
        self._scope = scope or f"{parts.scheme}://{parts.netloc}/.default"
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout))
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()
        self._rng = random.Random()
        redact_httpx_request_log()

    def close(self) -> None:
        """Close the connection pool (only a client this store created; an injected one is the caller's)."""
        if self._owns_client:
            self._client.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        interaction: str,
        params: list[tuple[str, str]] | None = None,
        json_body: Resource | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send with auth and retries; return a 2xx response or raise the typed error."""
        url = f"{self.base_url}/{path}" if path else self.base_url
        label = _label(path, params)
        content = jsonnum.dumps(json_body, separators=(",", ":")).encode() if json_body is not None else None
        refreshed = False
        attempt = 0
        while True:
            request_headers = {"Accept": FHIR_JSON, **(headers or {})}
            if content is not None:
                request_headers["Content-Type"] = FHIR_JSON
            token = self._bearer(force=False)
            if token is not None:
                request_headers["Authorization"] = f"Bearer {token}"
            try:
                response = self._client.request(
                    method, url, params=tuple(params) if params is not None else None, content=content,
                    headers=request_headers
                )
            except httpx.TransportError as exc:
                retryable = idempotent or isinstance(exc, _NOT_SENT)
                if not retryable or attempt >= self._max_retries:
                    raise _transport_error(exc, interaction, label, attempt + 1) from exc
                delay = self._backoff(attempt)
                logger.warning(
                    "FHIR %s %s: %s, retry %d/%d in %.2fs",
                    interaction,
                    label,
                    type(exc).__name__,
                    attempt + 1,
                    self._max_retries,
                    delay,
                )
                self._sleep(delay)
                attempt += 1
                continue
            status = response.status_code
            if status < 300:
                return response
            if status == 401 and self._credential is not None and not refreshed:
                # A revoked token or a continuous-access-evaluation challenge: fetch a fresh token once.
                # Credentials cache tokens; only the challenge's claims make them skip their cache.
                refreshed = True
                self._bearer(force=True, claims=_challenge_claims(response.headers.get("WWW-Authenticate")))
                continue
            retryable = status == 429 or (status in _RETRY_STATUSES and idempotent)
            if not retryable or attempt >= self._max_retries:
                raise self._http_error(response, interaction, label, token)
            hinted = self._retry_after(response) if status in (429, 503) else None
            delay = self._backoff(attempt) if hinted is None else hinted
            logger.warning(
                "FHIR %s %s: HTTP %d, retry %d/%d in %.2fs",
                interaction,
                label,
                status,
                attempt + 1,
                self._max_retries,
                delay,
            )
            self._sleep(delay)
            attempt += 1

    def _bearer(self, *, force: bool, claims: str | None = None) -> str | None:
        if self._credential is None:
            return None
        with self._token_lock:
            token = self._token
            if force or token is None or token.expires_on - _TOKEN_REFRESH_MARGIN_S <= time.time():
                try:
                    if claims:
                        token = self._credential.get_token(self._scope, claims=claims)
                    else:
                        token = self._credential.get_token(self._scope)
                except Exception as exc:
                    # Credential errors name the failing source, never a token (none was issued).
                    first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    raise Unauthorized(
                        f"could not get a token for scope {self._scope}: {type(exc).__name__}: {first_line}"
                    ) from exc
                self._token = token
            return token.token

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter in [cap/2, cap] so concurrent clients do not retry in lockstep."""
        cap = min(self._backoff_max, self._backoff_base * (2**attempt))
        return self._rng.uniform(cap / 2, cap)

    def _retry_after(self, response: httpx.Response) -> float | None:
        hinted = retry_after_s(response.headers)
        return None if hinted is None else min(hinted, self._backoff_max)

    def _http_error(
        self, response: httpx.Response, interaction: str, label: str, token: str | None
    ) -> FhirError:
        outcome = _operation_outcome(response)
        detail = _first_diagnostics(outcome) or response.reason_phrase or "no detail"
        message = f"FHIR {interaction} {label} failed with HTTP {response.status_code}: {detail}"
        if token:
            # A server may echo request headers in diagnostics; never let the token out.
            message = message.replace(token, "[redacted]")
            if outcome is not None and token in json.dumps(outcome):
                outcome = json.loads(json.dumps(outcome).replace(token, "[redacted]"))
        return error_for_status(response.status_code, message, outcome)



def _label(path: str, params: list[tuple[str, str]] | None) -> str:
    """The request for messages and logs: parameter names only, since values can identify a patient."""
    label = path or "(base)"
    if params:
        label += "?" + "&".join(dict.fromkeys(name for name, _ in params))
    return label



def json_or_none(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return jsonnum.loads(response.content)  # decimals as written
    except ValueError:
        return None


def _operation_outcome(response: httpx.Response) -> dict[str, Any] | None:
    body = json_or_none(response)
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


def _first_diagnostics(outcome: dict[str, Any] | None) -> str | None:
    issues = (outcome or {}).get("issue") or []
    if not issues or not isinstance(issues[0], dict):
        return None
    issue = issues[0]
    return issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")



class _QueryValueRedactor(logging.Filter):
    """httpx logs every request URL at INFO; search values (identifiers, patient ids) must not reach logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(_redacted_url(a) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def _redacted_url(url: httpx.URL) -> str:
    if not url.query:
        return str(url)
    names = dict.fromkeys(name for name, _ in parse_qsl(url.query.decode(), keep_blank_values=True))
    return str(url.copy_with(query=None)) + "?" + "&".join(f"{name}=..." for name in names)


def redact_httpx_request_log() -> None:
    """Keep search values (identifiers, patient ids) out of httpx's request log lines, once per process."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _QueryValueRedactor) for f in httpx_logger.filters):
        httpx_logger.addFilter(_QueryValueRedactor())


def _challenge_claims(challenge: str | None) -> str | None:
    """The decoded `claims` of a Bearer challenge (Entra ID CAE sends them base64url-encoded)."""
    match = re.search(r'claims="([^"]+)"', challenge or "")
    if not match:
        return None
    encoded = match.group(1)
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _transport_error(exc: httpx.TransportError, interaction: str, label: str, attempts: int) -> ServerError:
    # Only the exception class: transport messages can carry the full URL with query values.
    if isinstance(exc, httpx.TimeoutException):
        return ServerError(
            f"FHIR {interaction} {label}: timed out after {attempts} attempt(s) ({type(exc).__name__})",
            status=504,
        )
    return ServerError(
        f"FHIR {interaction} {label}: could not reach the server after {attempts} attempt(s) "
        f"({type(exc).__name__})",
        status=503,
    )
