"""Azure Communication Services SMS (`azure-communication-sms` 1.1.0), sent exactly once per message id.

Before every send: the number is normalized to E.164, the opt-out ledger is checked (the Python
SDK has no opt-out API), and the message id is claimed in the send ledger
(the SDK makes a new repeatability id per call, Repeatability-Request-ID,
https://learn.microsoft.com/rest/api/communication/sms/send, so a replayed call would
otherwise send again). The message id goes out as the SMS `tag`, so the delivery report
(`Microsoft.Communication.SMSDeliveryReportReceived`) names the message it is about.

Nothing here logs or raises with the phone number, the body or the access key.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from common.clock import Clock, SystemClock
from notifications.channels.base import OptOutChecker, OutgoingMessage, SendResult
from notifications.channels.ledger import DEFAULT_LEASE, SendLedger, claim_or_refusal
from notifications.connection import AcsConnection, transport_options

log = logging.getLogger(__name__)

# Provider replies are kept on the Communication (statusReason); numbers in them are masked so a
# phone number never lands in a record or a log line through an error text.
_DIGIT_RUN = re.compile(r"\+?\d[\d\s().-]{5,}\d")


def scrub(text: str | None, limit: int = 300) -> str:
    """A provider's error text, safe to store and log: digit runs (phone numbers) masked, bounded."""
    if not text:
        return ""
    return " ".join(_DIGIT_RUN.sub("<number>", str(text)).split())[:limit]


def retry_after_from(headers: Any, default: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `x-ms-retry-after-ms` or `Retry-After` (seconds or an
    HTTP date), as Azure services send them."""
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
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _sender(sender: str, default_region: str) -> str:
    """The "from": an E.164 number (toll-free, 10DLC), a short code, or an alphanumeric sender id."""
    from notifications.consent import InvalidPhoneNumber, normalize_e164

    text = (sender or "").strip()
    if re.fullmatch(r"\d{5,6}", text):
        return text  # a short code
    if re.fullmatch(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}", text):
        return text  # an alphanumeric sender id
    try:
        return normalize_e164(text, default_region=default_region)
    except InvalidPhoneNumber as exc:
        raise ValueError(f"the SMS 'from' is not a phone number, short code or sender id: {exc}") from None


class AcsSmsChannel:
    """`send()` returns sent / duplicate / transient (retry) / permanent (try the next channel)."""

    def __init__(
        self,
        connection: AcsConnection,
        sender: str,
        *,
        ledger: SendLedger,
        opt_outs: OptOutChecker | None = None,
        name: str = "sms",
        clock: Clock | None = None,
        delivery_reports: bool = True,
        connection_verify: bool | str = True,
        retry_total: int = 2,
        timeout_s: float = 30.0,
        lease: timedelta = DEFAULT_LEASE,
        default_region: str = "US",
    ) -> None:
        self.name = name
        self.connection = connection
        self.sender = _sender(sender, default_region)
        self.ledger = ledger
        self.opt_outs = opt_outs
        self.clock = clock or SystemClock()
        self.delivery_reports = delivery_reports
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self.timeout_s = timeout_s
        self.lease = lease
        self.default_region = default_region
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AcsSmsChannel(name={self.name!r}, endpoint={self.connection.endpoint!r})"

    def _sms_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from azure.communication.sms import SmsClient

                # The constructor, not from_connection_string: that one forces https (§0.3). A
                # connection retry re-sends the same body, hence the same repeatability id.
                self._client = SmsClient(
                    self.connection.endpoint,
                    self.connection.credential(),
                    retry_backoff_factor=0.5,
                    retry_backoff_max=8,
                    **transport_options(connection_verify=self.connection_verify, retry_total=self.retry_total,
                                        timeout_s=self.timeout_s),
                )
            return self._client

    def send(self, message: OutgoingMessage) -> SendResult:
        from notifications.consent import InvalidPhoneNumber, normalize_e164

        try:
            to = normalize_e164(message.to, default_region=self.default_region)
        except InvalidPhoneNumber as exc:
            return SendResult("permanent", reason=str(exc), code="invalid-recipient")
        if not message.body.strip():
            return SendResult("permanent", reason="the SMS body is empty", code="empty-body")
        # Checked before every SMS; only the STOP/START/HELP replies themselves may reach an
        # opted-out number (FCC 24-18 allows the one confirmation).
        if message.category != "consent" and self.opt_outs is not None and self.opt_outs.is_opted_out(to):
            log.info("sms %s not sent: recipient opted out", message.message_id)
            return SendResult("permanent", reason="the recipient has opted out of SMS (STOP)", code="opted-out")

        key = f"{self.name}:{message.message_id}"
        refusal = claim_or_refusal(self.ledger, key, self.clock.now(), self.lease)
        if refusal is not None:
            return refusal
        return self._send_claimed(key, to, message)

    def _send_claimed(self, key: str, to: str, message: OutgoingMessage) -> SendResult:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            results = self._sms_client().send(
                from_=self.sender,
                to=[to],
                message=message.body,
                enable_delivery_report=self.delivery_reports,
                tag=message.message_id,
            )
        except ServiceRequestError as exc:
            # The request never reached the service (connection refused, DNS, TLS): nothing sent.
            self.ledger.release(key)
            return SendResult("transient", reason=f"could not reach ACS: {type(exc).__name__}", code="network")
        except ServiceResponseError as exc:
            return self._in_doubt(key, f"no response from ACS after sending ({type(exc).__name__})")
        except ClientAuthenticationError as exc:
            self.ledger.release(key)
            status = getattr(exc, "status_code", None)
            return SendResult("permanent", reason=f"ACS refused the credentials (HTTP {status})", code="auth")
        except HttpResponseError as exc:
            return self._http_error(key, exc)
        except Exception as exc:  # noqa: BLE001 - an unknown failure mid-call: the send may have happened
            return self._in_doubt(key, f"unexpected error while sending: {type(exc).__name__}")

        result = results[0] if results else None
        if result is None:
            return self._in_doubt(key, "ACS answered without a per-recipient result")
        if result.successful:
            self.ledger.mark_sent(key, result.message_id, self.clock.now())
            log.info("sms %s sent", message.message_id)
            return SendResult("sent", provider_id=result.message_id)
        # Per-recipient refusal: nothing went out to this number.
        self.ledger.release(key)
        status = result.http_status_code or 0
        reason = f"ACS refused the recipient (HTTP {status}): {scrub(result.error_message) or 'no reason given'}"
        if status == 429 or status >= 500:
            return SendResult("transient", reason=reason, retry_after_s=None, code="provider-busy")
        log.info("sms %s refused by provider (HTTP %s)", message.message_id, status)
        return SendResult("permanent", reason=reason, code="rejected")

    def _http_error(self, key: str, exc: Any) -> SendResult:
        status = getattr(exc, "status_code", None) or 0
        headers = getattr(getattr(exc, "response", None), "headers", None)
        detail = scrub(getattr(exc, "message", None) or str(exc), 200)
        if status in (502, 504):
            # A gateway timed out: the service behind it may have accepted the message.
            return self._in_doubt(key, f"ACS gateway answered HTTP {status}")
        self.ledger.release(key)
        if status == 429:
            return SendResult("transient", reason="ACS throttled the request (HTTP 429)",
                              retry_after_s=retry_after_from(headers, 1.0), code="throttled")
        if status >= 500 or status == 408:
            return SendResult("transient", reason=f"ACS is unavailable (HTTP {status})",
                              retry_after_s=retry_after_from(headers), code="provider-error")
        if status == 403:
            return SendResult("permanent", reason=f"ACS refused the request (HTTP 403): {detail}", code="auth")
        return SendResult("permanent", reason=f"ACS rejected the request (HTTP {status}): {detail}", code="rejected")

    def _in_doubt(self, key: str, reason: str) -> SendResult:
        self.ledger.mark_in_doubt(key, reason, self.clock.now())
        log.warning("sms %s outcome unknown: %s", key, reason)
        return SendResult("permanent", reason=f"{reason}; not sent again to avoid a duplicate", code="in-doubt")

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            inner = getattr(client, "_sms_service_client", None)
            if inner is not None:
                inner.close()
