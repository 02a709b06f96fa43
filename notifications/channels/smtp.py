"""SMTP, for on-premises installs (a hospital relay, Exchange, Postfix): the provider adapter.

SMTP has no idempotency (`idempotency = "none"`: the send pipeline claims every message id in the
send ledger first), and the session is driven step by step (MAIL, RCPT, DATA) to know how far a
failure got: anything refused before the end of DATA sent nothing and may be retried; a connection
lost after the message text went out leaves the outcome unknown, and the message is then *not*
sent again ("in-doubt").

The password is a `Secret`; smtplib's debug output (which would print the AUTH exchange) stays off.
"""

from __future__ import annotations

import email.policy
import re
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal

from common.clock import Clock, SystemClock
from notifications.channels.base import Idempotency, OutgoingMessage, ProviderResult
from notifications.channels.config import BuildContext, ChannelConfigError, ProviderSpec, require
from notifications.channels.pipeline import EMAIL_ADDRESS
from notifications.connection import Secret

Security = Literal["starttls", "tls", "none"]
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def _masked(text: object) -> str:
    """An SMTP reply with the addresses it echoes masked (the pipeline masks numbers)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _ADDRESS.sub("<address>", str(text))


class SmtpProvider:
    idempotency: Idempotency = "none"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str | None = None,
        password: Secret | str | None = None,
        security: Security = "starttls",
        clock: Clock | None = None,
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        default_subject: str = "A message from your care team",
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"SMTP security must be starttls, tls or none, not {security!r}")
        if not EMAIL_ADDRESS.match(sender or ""):
            raise ValueError("the SMTP sender must be an email address")
        if username and not password:
            raise ValueError("an SMTP username needs a password")
        if username and security == "none":
            # The login would cross the network in clear text.
            raise ValueError("SMTP login without TLS is refused; use security starttls or tls")
        self.host = host
        self.port = int(port)
        self.sender = sender
        self.username = username
        self.password = password if isinstance(password, Secret) or password is None else Secret(password)
        self.security = security
        self.clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context or ssl.create_default_context(cafile=ca_file)
        self.default_subject = default_subject
        self.local_hostname = local_hostname

    def __repr__(self) -> str:
        return (f"SmtpProvider(host={self.host!r}, port={self.port}, "
                f"security={self.security!r}, username={'set' if self.username else None})")

    def build(self, message: OutgoingMessage) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.to
        mail["Subject"] = message.subject or self.default_subject
        mail["Date"] = format_datetime(self.clock.now())
        # A stable Message-ID: receiving systems that de-duplicate by it see a resend as the same mail.
        mail["Message-ID"] = f"<{message.message_id}@{self.sender.rpartition('@')[2]}>"
        mail.set_content(message.body)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=self.ssl_context,
                                    local_hostname=self.local_hostname)
        conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s, local_hostname=self.local_hostname)
        if self.security == "starttls":
            conn.ehlo()
            conn.starttls(context=self.ssl_context)
            conn.ehlo()
        return conn

    def send(self, message: OutgoingMessage) -> ProviderResult:
        mail = self.build(message)
        stage = "connect"
        conn: smtplib.SMTP | None = None
        try:
            conn = self._connect()
            if self.username and self.password is not None:
                stage = "login"
                conn.login(self.username, self.password.reveal())
            # The envelope step by step, so a failure says whether the message text went out.
            stage = "envelope"
            code, reply = conn.mail(self.sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, self.sender)
            code, reply = conn.rcpt(message.to)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({message.to: (code, reply)})
            stage = "data"
            conn.data(mail.as_bytes(policy=email.policy.SMTP))  # raises SMTPDataError unless 250
            stage = "sent"
        except smtplib.SMTPAuthenticationError as exc:
            return ProviderResult("refused", reason=f"the SMTP server refused the login ({exc.smtp_code})", code="auth")
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            code = codes[0] if codes else 550
            detail = _masked(next(iter(exc.recipients.values()))[1]) if exc.recipients else None
            return self._refused(code, f"the SMTP server refused the recipient ({code})", detail=detail)
        except smtplib.SMTPSenderRefused as exc:
            return self._refused(exc.smtp_code, f"the SMTP server refused the sender ({exc.smtp_code})", "config")
        except smtplib.SMTPDataError as exc:
            # The server answered DATA with an error: it did not take the message.
            return self._refused(exc.smtp_code, f"the SMTP server refused the message ({exc.smtp_code})",
                                 detail=_masked(exc.smtp_error))
        except smtplib.SMTPNotSupportedError:
            return ProviderResult("refused", reason="the SMTP server does not support STARTTLS or AUTH as configured",
                                  code="config")
        except OSError as exc:
            # Also every other smtplib error (SMTPException is an OSError): disconnects, timeouts,
            # a refused STARTTLS. Only a loss during DATA can have delivered the message.
            if stage == "data":
                return ProviderResult("in-doubt",
                                      reason=f"SMTP connection lost while sending the message ({type(exc).__name__})")
            if isinstance(exc, smtplib.SMTPResponseException):
                return self._refused(exc.smtp_code, f"the SMTP server answered {exc.smtp_code} at {stage}",
                                     "provider-error")
            return ProviderResult("unavailable", reason=f"could not reach the SMTP server ({type(exc).__name__})",
                                  code="network")
        finally:
            if conn is not None:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    conn.close()
        return ProviderResult("accepted", provider_id=mail["Message-ID"])

    @staticmethod
    def _refused(code: int, reason: str, kind: str = "rejected", *, detail: str | None = None) -> ProviderResult:
        # SMTP reply classes: 4xx try again later, 5xx permanent (RFC 5321 §4.2.1).
        if 400 <= int(code) < 500:
            return ProviderResult("unavailable", reason=reason, code="provider-busy", detail=detail)
        return ProviderResult("refused", reason=reason, code=kind, detail=detail)


def _build(name: str, entry: Mapping[str, Any], context: BuildContext) -> SmtpProvider:
    try:
        port = int(entry.get("port", 587))
    except (TypeError, ValueError):
        raise ChannelConfigError(f"channel {name!r}: 'port' must be a number") from None
    password = entry.get("password")
    return SmtpProvider(
        str(require(name, entry, "host")),
        port,
        str(require(name, entry, "sender")),
        username=entry.get("username") or None,
        password=None
        if password in (None, "")
        else (password if isinstance(password, Secret) else Secret(str(password))),
        security=entry.get("security", "starttls"),
        clock=context.clock,
        timeout_s=float(entry.get("timeout_s", 30.0)),
        ca_file=entry.get("ca_file"),
        default_subject=str(entry.get("default_subject", "A message from your care team")),
    )


SPEC = ProviderSpec(
    kinds=("email",),
    fields=frozenset({"host", "port", "sender", "username", "password", "security", "timeout_s", "ca_file",
                      "default_subject"}),
    build=_build,
)
