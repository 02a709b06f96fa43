"""HTTP for the FHIR adapter: auth, retries and error mapping (`fhirstore.http_store` on top).

Tokens come from an `azure-identity` credential. Retries run on tenacity
(https://tenacity.readthedocs.io/en/latest/api.html) and are limited to what is safe to repeat: a
plain create (POST without If-None-Exist) and a transaction may already have been applied when a
gateway answers 502/503/504 or a read times out, so those only retry 429 and connection failures
that happened before the request was sent. The policy is in `docs/decisions.md` ("Retries on tenacity").
Request values never reach logs or error messages: search values can identify a patient.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from azure.core.credentials import AccessToken, TokenCredential
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

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


@dataclass
class _Call:
    """One request as every attempt sends it, and whether its one token refresh is spent."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...] | None
    content: bytes | None
    headers: dict[str, str]
    interaction: str
    label: str
    idempotent: bool
    refreshed: bool = False


class _Failed(Exception):
    """An attempt that got no 2xx: the answer (`response`, sent with `token`) or the transport error."""

    def __init__(
        self,
        call: _Call,
        *,
        response: httpx.Response | None = None,
        token: str | None = None,
        cause: httpx.TransportError | None = None,
    ) -> None:
        super().__init__(call.label)
        self.call = call
        self.response = response
        self.token = token
        self.cause = cause

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None

    @property
    def reason(self) -> str:
        """For logs: the status or the exception class (transport messages can carry the full URL)."""
        return f"HTTP {self.status}" if self.response is not None else type(self.cause).__name__


def _safe_to_repeat(exc: BaseException) -> bool:
    """The retry predicate. 429 means the server did not act, so any request may repeat; a gateway
    error or a timeout may come after the server applied the request, so only an idempotent one
    repeats then; a connection that never opened sent nothing, so any request may repeat."""
    if not isinstance(exc, _Failed):
        return False
    if exc.status is not None:
        return exc.status == 429 or (exc.status in _RETRY_STATUSES and exc.call.idempotent)
    return exc.call.idempotent or isinstance(exc.cause, _NOT_SENT)


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
        self._backoff_max = backoff_max
        # Exponential with jitter in [cap/2, cap], cap = min(backoff_max, backoff_base * 2**retry):
        # concurrent clients do not retry in lockstep, and a wait never collapses to zero (tenacity's
        # full-jitter `wait_random_exponential` alone draws from [0, cap]).
        half = {"multiplier": backoff_base / 2, "max": backoff_max / 2}
        self._backoff = wait_exponential(**half) + wait_random_exponential(**half)
        # One controller for every request: tenacity keeps a call's state (attempt number, statistics)
        # thread-local, and everything a decision needs travels on the `_Failed` of the attempt.
        self._retrying = Retrying(
            stop=stop_after_attempt(max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_safe_to_repeat),
            before_sleep=self._log_retry,
            sleep=sleep,
            reraise=True,
        )
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout))
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()
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
        content = jsonnum.dumps(json_body, separators=(",", ":")).encode() if json_body is not None else None
        call = _Call(
            method=method,
            url=f"{self.base_url}/{path}" if path else self.base_url,
            params=tuple(params) if params is not None else None,
            content=content,
            headers=headers or {},
            interaction=interaction,
            label=_label(path, params),
            idempotent=idempotent,
        )
        try:
            return self._retrying(self._attempt, call)
        except _Failed as failed:
            attempts = self._retrying.statistics.get("attempt_number", 1)
            raise self._typed_error(failed, call, attempts) from failed.cause

    def _attempt(self, call: _Call) -> httpx.Response:
        """One attempt: a 2xx response, else `_Failed` with what the retry policy needs to decide."""
        response, token = self._send(call)
        if response.status_code == 401 and self._credential is not None and not call.refreshed:
            # Not a retry in the backoff sense, so not a tenacity predicate: a revoked token or a
            # continuous-access-evaluation challenge is answered at once with a fresh token, once per
            # request, with no wait and without using up an attempt (a tenacity retry would do both).
            # Credentials cache tokens; only the challenge's claims make them skip their cache.
            call.refreshed = True
            self._bearer(force=True, claims=_challenge_claims(response.headers.get("WWW-Authenticate")))
            response, token = self._send(call)
        if response.status_code < 300:
            return response
        raise _Failed(call, response=response, token=token)

    def _send(self, call: _Call) -> tuple[httpx.Response, str | None]:
        request_headers = {"Accept": FHIR_JSON, **call.headers}
        if call.content is not None:
            request_headers["Content-Type"] = FHIR_JSON
        token = self._bearer(force=False)
        if token is not None:
            request_headers["Authorization"] = f"Bearer {token}"
        try:
            response = self._client.request(
                call.method, call.url, params=call.params, content=call.content, headers=request_headers
            )
        except httpx.TransportError as exc:
            raise _Failed(call, cause=exc) from exc
        return response, token

    def _wait(self, state: RetryCallState) -> float:
        """The server's Retry-After on 429/503 (capped at `backoff_max`), else exponential backoff."""
        failed = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failed, _Failed) and failed.response is not None and failed.status in (429, 503):
            hinted = retry_after_s(failed.response.headers)
            if hinted is not None:
                return min(hinted, self._backoff_max)
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        failed = state.outcome.exception() if state.outcome is not None else None
        if not isinstance(failed, _Failed):
            return
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "FHIR %s %s: %s, retry %d/%d in %.2fs",
            failed.call.interaction,
            failed.call.label,
            failed.reason,
            state.attempt_number,
            self._max_retries,
            delay,
        )

    def _typed_error(self, failed: _Failed, call: _Call, attempts: int) -> FhirError:
        if failed.response is not None:
            return self._http_error(failed.response, call.interaction, call.label, failed.token)
        assert failed.cause is not None
        return _transport_error(failed.cause, call.interaction, call.label, attempts)

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
