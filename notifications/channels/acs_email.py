"""Azure Communication Services Email (`azure-communication-email` 1.1.0): the provider adapter.

Idempotency comes from the service: `begin_send(..., operation_id=...)` sends an `Operation-Id`
header (Repeatability-Request-ID, https://learn.microsoft.com/rest/api/communication/sms/send), and Vigil derives that
UUID from the message id, so a replayed send names the same operation (`idempotency = "provider"`:
the send pipeline's ledger, when there is one, only keeps a replay from calling the service again).

In production the adapter does not poll (`wait_for_result=False`): the accepted operation id is
the provider id, and `Microsoft.Communication.EmailDeliveryReportReceived` reports the outcome.
Polling (`polling_interval`, default 30 s in the SDK) is for tests and small installs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from notifications.channels.acs_errors import acs_unavailable
from notifications.channels.base import Idempotency, OutgoingMessage, ProviderResult
from notifications.channels.config import BuildContext, ProviderSpec, require, secret_text
from notifications.channels.pipeline import EMAIL_ADDRESS
from notifications.connection import AcsConnection, parse_acs_connection_string, transport_options

log = logging.getLogger(__name__)

# Namespace for operation ids: uuid5(namespace, message id) is stable across processes and runs.
OPERATION_NS = uuid.UUID("2b7e0f4e-8a61-4c57-a0b3-5f1b6a0d9c3e")


def operation_id_for(message_id: str) -> str:
    return str(uuid.uuid5(OPERATION_NS, message_id))


class AcsEmailProvider:
    idempotency: Idempotency = "provider"

    def __init__(
        self,
        connection: AcsConnection,
        sender: str,
        *,
        wait_for_result: bool = False,
        polling_interval: float = 5.0,
        connection_verify: bool | str = True,
        retry_total: int = 2,
        timeout_s: float = 30.0,
        default_subject: str = "A message from your care team",
        disable_tracking: bool = True,
    ) -> None:
        if not EMAIL_ADDRESS.match(sender or ""):
            raise ValueError("the ACS email sender must be an address like DoNotReply@<your verified domain>")
        self.connection = connection
        self.sender = sender
        self.wait_for_result = wait_for_result
        self.polling_interval = polling_interval
        self.connection_verify = connection_verify
        self.retry_total = retry_total
        self.timeout_s = timeout_s
        self.default_subject = default_subject
        # Open/click tracking rewrites links and adds a pixel: not for messages about someone's care.
        self.disable_tracking = disable_tracking
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AcsEmailProvider(endpoint={self.connection.endpoint!r})"

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

    def send(self, message: OutgoingMessage) -> ProviderResult:
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
            return ProviderResult("duplicate", provider_id=operation_id)
        except (ServiceRequestError, ServiceResponseError) as exc:
            # Safe to retry either way: the same operation id cannot produce a second email.
            return ProviderResult("unavailable", reason=f"could not complete the call to ACS: {type(exc).__name__}",
                                  code="network")
        except ClientAuthenticationError as exc:
            return ProviderResult("refused", reason=f"ACS refused the credentials (HTTP {exc.status_code})",
                                  code="auth")
        except HttpResponseError as exc:
            status = exc.status_code or 0
            headers = getattr(exc.response, "headers", None)
            unavailable = acs_unavailable(status, headers)
            if unavailable is not None:
                return unavailable
            if status == 200:
                # Polling raises when the operation itself ended Failed or Canceled.
                error = getattr(exc, "error", None)
                detail = f"{getattr(error, 'code', '') or ''} {getattr(error, 'message', '') or ''}".strip()
                return ProviderResult("refused", reason="ACS email operation failed", provider_id=operation_id,
                                      code="rejected", detail=detail or "no reason given")
            return ProviderResult("refused", reason=f"ACS rejected the email (HTTP {status})", code="rejected",
                                  detail=str(exc.message))
        state = str(outcome.get("status", ""))
        provider_id = str(outcome.get("id") or operation_id)
        if state in ("Failed", "Canceled"):
            failure = outcome.get("error") or {}
            log.info("email %s failed at the provider (%s)", message.message_id, state)
            return ProviderResult("refused", provider_id=provider_id, reason=f"ACS email {state}", code="rejected",
                                  detail=str(failure.get("message") or failure.get("code") or state))
        log.info("email %s accepted (%s)", message.message_id, state or "accepted")
        return ProviderResult("accepted", provider_id=provider_id)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _build(name: str, entry: Mapping[str, Any], context: BuildContext) -> AcsEmailProvider:
    connection = parse_acs_connection_string(
        secret_text(require(name, entry, "connection_string")),
        allow_insecure_http=bool(entry.get("allow_insecure_http", False)),
    )
    return AcsEmailProvider(
        connection,
        str(require(name, entry, "sender")),
        wait_for_result=bool(entry.get("wait_for_result", False)),
        polling_interval=float(entry.get("polling_interval", 5.0)),
        connection_verify=entry.get("connection_verify", True),
        retry_total=int(entry.get("retry_total", 2)),
        timeout_s=float(entry.get("timeout_s", 30.0)),
        default_subject=str(entry.get("default_subject", "A message from your care team")),
    )


SPEC = ProviderSpec(
    kinds=("email",),
    fields=frozenset({"connection_string", "sender", "wait_for_result", "polling_interval", "connection_verify",
                      "retry_total", "timeout_s", "default_subject", "allow_insecure_http"}),
    build=_build,
)
