"""Azure Communication Services SMS (`azure-communication-sms` 1.1.0): the provider adapter.

The SDK makes a new repeatability id per call (Repeatability-Request-ID,
https://learn.microsoft.com/rest/api/communication/sms/send), so ACS SMS is not idempotent: the
send pipeline claims every message id in the send ledger first (`idempotency = "none"`). The
message id goes out as the SMS `tag`, so the delivery report
(`Microsoft.Communication.SMSDeliveryReportReceived`) names the message it is about.

Nothing here logs or raises with the phone number, the body or the access key.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from notifications.channels.acs_errors import acs_unavailable
from notifications.channels.base import Idempotency, OutgoingMessage, ProviderResult
from notifications.channels.config import BuildContext, ProviderSpec, require, secret_text
from notifications.connection import AcsConnection, parse_acs_connection_string, transport_options
from notifications.consent import InvalidPhoneNumber, normalize_e164


def _sender(sender: str, default_region: str) -> str:
    """The "from": an E.164 number (toll-free, 10DLC), a short code, or an alphanumeric sender id."""
    text = (sender or "").strip()
    if re.fullmatch(r"\d{5,6}", text):
        return text  # a short code
    if re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}", text):
        return text  # an alphanumeric sender id
    try:
        return normalize_e164(text, default_region=default_region)
    except InvalidPhoneNumber as exc:
        raise ValueError(f"the SMS 'from' is not a phone number, short code or sender id: {exc}") from None


class AcsSmsProvider:
    """One SMS per `send()` to a number the pipeline has normalized, consented and claimed."""

    idempotency: Idempotency = "none"

    def __init__(
        self,
        connection: AcsConnection,
        sender: str,
        *,
        delivery_reports: bool = True,
        connection_verify: bool | str = True,
        retry_total: int = 2,
        timeout_s: float = 30.0,
        default_region: str = "US",
    ) -> None:
        self.connection = connection
        self.sender = _sender(sender, default_region)
        self.delivery_reports = delivery_reports
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self.timeout_s = timeout_s
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AcsSmsProvider(endpoint={self.connection.endpoint!r})"

    def _sms_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from azure.communication.sms import SmsClient

                # The constructor, not from_connection_string: that one forces https (Vigil parses
                # the connection string itself, docs/decisions.md). A connection retry re-sends the
                # same body, hence the same repeatability id.
                self._client = SmsClient(
                    self.connection.endpoint,
                    self.connection.credential(),
                    retry_backoff_factor=0.5,
                    retry_backoff_max=8,
                    **transport_options(connection_verify=self.connection_verify, retry_total=self.retry_total,
                                        timeout_s=self.timeout_s),
                )
            return self._client

    def send(self, message: OutgoingMessage) -> ProviderResult:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            results = self._sms_client().send(
                from_=self.sender,
                to=[message.to],
                message=message.body,
                enable_delivery_report=self.delivery_reports,
                tag=message.message_id,
            )
        except ServiceRequestError as exc:
            # The request never reached the service (connection refused, DNS, TLS): nothing sent.
            return ProviderResult("unavailable", reason=f"could not reach ACS: {type(exc).__name__}", code="network")
        except ServiceResponseError as exc:
            return ProviderResult("in-doubt", reason=f"no response from ACS after sending ({type(exc).__name__})")
        except ClientAuthenticationError as exc:
            status = getattr(exc, "status_code", None)
            return ProviderResult("refused", reason=f"ACS refused the credentials (HTTP {status})", code="auth")
        except HttpResponseError as exc:
            return _http_error(exc)

        result = results[0] if results else None
        if result is None:
            return ProviderResult("in-doubt", reason="ACS answered without a per-recipient result")
        if result.successful:
            return ProviderResult("accepted", provider_id=result.message_id)
        # Per-recipient refusal: nothing went out to this number.
        status = result.http_status_code or 0
        reason = f"ACS refused the recipient (HTTP {status})"
        detail = result.error_message or "no reason given"
        if status == 429 or status >= 500:
            return ProviderResult("unavailable", reason=reason, code="provider-busy", detail=detail)
        return ProviderResult("refused", reason=reason, code="rejected", detail=detail)

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            inner = getattr(client, "_sms_service_client", None)
            if inner is not None:
                inner.close()


def _http_error(exc: Any) -> ProviderResult:
    status = getattr(exc, "status_code", None) or 0
    headers = getattr(getattr(exc, "response", None), "headers", None)
    detail = str(getattr(exc, "message", None) or exc)
    if status in (502, 504):
        # A gateway timed out: the service behind it may have accepted the message.
        return ProviderResult("in-doubt", reason=f"ACS gateway answered HTTP {status}")
    unavailable = acs_unavailable(status, headers)
    if unavailable is not None:
        return unavailable
    if status == 403:
        return ProviderResult("refused", reason="ACS refused the request (HTTP 403)", code="auth", detail=detail)
    return ProviderResult("refused", reason=f"ACS rejected the request (HTTP {status})", code="rejected", detail=detail)


def _build(name: str, entry: Mapping[str, Any], context: BuildContext) -> AcsSmsProvider:
    connection = parse_acs_connection_string(
        secret_text(require(name, entry, "connection_string")),
        allow_insecure_http=bool(entry.get("allow_insecure_http", False)),
    )
    return AcsSmsProvider(
        connection,
        str(require(name, entry, "from")),
        delivery_reports=bool(entry.get("delivery_reports", True)),
        connection_verify=entry.get("connection_verify", True),
        retry_total=int(entry.get("retry_total", 2)),
        timeout_s=float(entry.get("timeout_s", 30.0)),
        default_region=str(entry.get("default_region", "US")),
    )


SPEC = ProviderSpec(
    kinds=("sms",),
    fields=frozenset({"connection_string", "from", "delivery_reports", "connection_verify", "retry_total",
                      "timeout_s", "allow_insecure_http"}),
    build=_build,
)
