"""Azure Communication Services Email (`azure-communication-email` 1.1.0).

Idempotency comes from the service: `begin_send(..., operation_id=...)` sends an `Operation-Id`
header (Repeatability-Request-ID, https://learn.microsoft.com/rest/api/communication/sms/send), and Vigil derives that
UUID from the message id, so a replayed send
names the same operation. An optional send ledger additionally keeps a replay from calling the
service at all once a send is recorded.

In production the channel does not poll (`wait_for_result=False`): the accepted operation id is
the provider id, and `Microsoft.Communication.EmailDeliveryReportReceived` reports the outcome.
Polling (`polling_interval`, default 30 s in the SDK) is for tests and small installs.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from datetime import timedelta
from typing import Any

from common.clock import Clock, SystemClock
from notifications.channels.acs_sms import retry_after_from, scrub
from notifications.channels.base import OutgoingMessage, SendResult
from notifications.channels.ledger import DEFAULT_LEASE, SendLedger, claim_or_refusal
from notifications.connection import AcsConnection, transport_options

log = logging.getLogger(__name__)

# Namespace for operation ids: uuid5(namespace, message id) is stable across processes and runs.
OPERATION_NS = uuid.UUID("2b7e0f4e-8a61-4c57-a0b3-5f1b6a0d9c3e")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def operation_id_for(message_id: str) -> str:
    return str(uuid.uuid5(OPERATION_NS, message_id))


class AcsEmailChannel:
    def __init__(
        self,
        connection: AcsConnection,
        sender: str,
        *,
        name: str = "email",
        ledger: SendLedger | None = None,
        clock: Clock | None = None,
        wait_for_result: bool = False,
        polling_interval: float = 5.0,
        connection_verify: bool | str = True,
        retry_total: int = 2,
        timeout_s: float = 30.0,
        default_subject: str = "A message from your care team",
        disable_tracking: bool = True,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        if not _EMAIL.match(sender or ""):
            raise ValueError("the ACS email sender must be an address like DoNotReply@<your verified domain>")
        self.name = name
        self.connection = connection
        self.sender = sender
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.wait_for_result = wait_for_result
        self.polling_interval = polling_interval
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self.timeout_s = timeout_s
        self.default_subject = default_subject
        # Open/click tracking rewrites links and adds a pixel: not for messages about someone's care.
        self.disable_tracking = disable_tracking
        self.lease = lease
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AcsEmailChannel(name={self.name!r}, endpoint={self.connection.endpoint!r})"

    def _email_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.communication.email import EmailClient

                self._client = EmailClient(
                    self.connection.endpoint,
                    self.connection.credential(),
                    **transport_options(connection_verify=self.connection_verify, retry_total=self.retry_total,
                                        timeout_s=self.timeout_s),
                )
            return self._client

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        content: dict[str, Any] = {"subject": message.subject or self.default_subject, "plainText": message.body}
        if message.html:
            content["html"] = message.html
        return {
            "senderAddress": self.sender,
            "recipients": {"to": [{"address": message.to}]},
            "content": content,
            "userEngagementTrackingDisabled": self.disable_tracking,
        }

    def send(self, message: OutgoingMessage) -> SendResult:
        if not _EMAIL.match(message.to or ""):
            return SendResult("permanent", reason="the recipient is not an email address", code="invalid-recipient")
        key = f"{self.name}:{message.message_id}"
        if self.ledger is not None:
            # In doubt, sending again is safe: the operation id makes the service de-duplicate.
            refusal = claim_or_refusal(self.ledger, key, self.clock.now(), self.lease, resend_in_doubt=True)
            if refusal is not None:
                return refusal
        result = self._send(message)
        if self.ledger is not None:
            if result.status in ("sent", "duplicate"):
                self.ledger.mark_sent(key, result.provider_id, self.clock.now())
            else:
                self.ledger.release(key)
        return result

    def _send(self, message: OutgoingMessage) -> SendResult:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ServiceRequestError,
            ServiceResponseError,
        )

        operation_id = operation_id_for(message.message_id)
        try:
            if self.wait_for_result:
                poller = self._email_client().begin_send(
                    self.payload(message), operation_id=operation_id, polling_interval=self.polling_interval
                )
            else:
                poller = self._email_client().begin_send(
                    self.payload(message), operation_id=operation_id, polling=False
                )
            outcome = poller.result() or {}
        except ResourceExistsError:
            # The service already has this operation: the message was accepted before.
            return SendResult("duplicate", provider_id=operation_id)
        except (ServiceRequestError, ServiceResponseError) as exc:
            # Safe to retry either way: the same operation id cannot produce a second email.
            return SendResult("transient", reason=f"could not complete the call to ACS: {type(exc).__name__}",
                              code="network")
        except ClientAuthenticationError as exc:
            return SendResult("permanent", reason=f"ACS refused the credentials (HTTP {exc.status_code})", code="auth")
        except HttpResponseError as exc:
            status = exc.status_code or 0
            headers = getattr(exc.response, "headers", None)
            if status == 429:
                return SendResult("transient", reason="ACS throttled the request (HTTP 429)",
                                  retry_after_s=retry_after_from(headers, 1.0), code="throttled")
            if status >= 500 or status == 408:
                return SendResult("transient", reason=f"ACS is unavailable (HTTP {status})",
                                  retry_after_s=retry_after_from(headers), code="provider-error")
            if status == 200:
                # Polling raises when the operation itself ended Failed or Canceled.
                error = getattr(exc, "error", None)
                detail = scrub(f"{getattr(error, 'code', '') or ''} {getattr(error, 'message', '') or ''}".strip(), 200)
                return SendResult("permanent", reason=f"ACS email operation failed: {detail or 'no reason given'}",
                                  provider_id=operation_id, code="rejected")
            return SendResult("permanent", reason=f"ACS rejected the email (HTTP {status}): {scrub(exc.message, 200)}",
                              code="rejected")
        state = str(outcome.get("status", ""))
        provider_id = str(outcome.get("id") or operation_id)
        if state in ("Failed", "Canceled"):
            failure = outcome.get("error") or {}
            reason = scrub(str(failure.get("message") or failure.get("code") or state), 200)
            log.info("email %s failed at the provider (%s)", message.message_id, state)
            return SendResult("permanent", provider_id=provider_id, reason=f"ACS email {state}: {reason}",
                              code="rejected")
        log.info("email %s accepted (%s)", message.message_id, state or "accepted")
        return SendResult("sent", provider_id=provider_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
