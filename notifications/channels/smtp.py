"""SMTP, for on-premises installs (a hospital relay, Exchange, Postfix).

SMTP has no idempotency, so the send ledger guards every message id, and the session is driven
step by step (MAIL, RCPT, DATA) to know how far a failure got: anything refused before the end of
DATA sent nothing and may be retried; a connection lost after the message text went out leaves
the outcome unknown, and the message is then *not* sent again ("in-doubt").

The password is a `Secret`; smtplib's debug output (which would print the AUTH exchange) stays off.
"""

from __future__ import annotations

import email.policy
import logging
import re
import smtplib
import ssl
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from common.clock import Clock, SystemClock
from notifications.channels.acs_sms import scrub
from notifications.channels.base import OutgoingMessage, SendResult
from notifications.channels.ledger import DEFAULT_LEASE, SendLedger, claim_or_refusal
from notifications.connection import Secret

log = logging.getLogger(__name__)

Security = Literal["starttls", "tls", "none"]
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _clean(text: object) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return scrub(_ADDRESS.sub("<address>", str(text)), 200)


class SmtpChannel:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        ledger: SendLedger,
        name: str = "smtp",
        username: str | None = None,
        password: Secret | str | None = None,
        security: Security = "starttls",
        clock: Clock | None = None,
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        default_subject: str = "A message from your care team",
        lease: timedelta = DEFAULT_LEASE,
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"SMTP security must be starttls, tls or none, not {security!r}")
        if not _EMAIL.match(sender or ""):
            raise ValueError("the SMTP sender must be an email address")
        if username and not password:
            raise ValueError("an SMTP username needs a password")
        if username and security == "none":
            # The login would cross the network in clear text.
            raise ValueError("SMTP login without TLS is refused; use security starttls or tls")
        self.name = name
        self.host = host
        self.port = int(port)
        self.sender = sender
        self.ledger = ledger
        self.username = username
        self.password = password if isinstance(password, Secret) or password is None else Secret(password)
        self.security = security
        self.clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context or ssl.create_default_context(cafile=ca_file)
        self.default_subject = default_subject
        self.lease = lease
        self.local_hostname = local_hostname

    def __repr__(self) -> str:
        return (f"SmtpChannel(name={self.name!r}, host={self.host!r}, port={self.port}, "
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

    def send(self, message: OutgoingMessage) -> SendResult:
        if not _EMAIL.match(message.to or ""):
            return SendResult("permanent", reason="the recipient is not an email address", code="invalid-recipient")
        key = f"{self.name}:{message.message_id}"
        refusal = claim_or_refusal(self.ledger, key, self.clock.now(), self.lease)
        if refusal is not None:
            return refusal
        return self._send_claimed(key, message)

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

    def _send_claimed(self, key: str, message: OutgoingMessage) -> SendResult:
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
            self.ledger.release(key)
            return SendResult("permanent", reason=f"the SMTP server refused the login ({exc.smtp_code})", code="auth")
        except smtplib.SMTPRecipientsRefused as exc:
            self.ledger.release(key)
            codes = [code for code, _ in exc.recipients.values()]
            code = codes[0] if codes else 550
            detail = _clean(next(iter(exc.recipients.values()))[1]) if exc.recipients else ""
            return self._refused(code, f"the SMTP server refused the recipient ({code} {detail})".strip())
        except smtplib.SMTPSenderRefused as exc:
            self.ledger.release(key)
            return self._refused(exc.smtp_code, f"the SMTP server refused the sender ({exc.smtp_code})", "config")
        except smtplib.SMTPDataError as exc:
            # The server answered DATA with an error: it did not take the message.
            self.ledger.release(key)
            return self._refused(exc.smtp_code, f"the SMTP server refused the message ({exc.smtp_code} "
                                 f"{_clean(exc.smtp_error)})")
        except smtplib.SMTPNotSupportedError:
            self.ledger.release(key)
            return SendResult("permanent", reason="the SMTP server does not support STARTTLS or AUTH as configured",
                              code="config")
        except OSError as exc:
            # Also every other smtplib error (SMTPException is an OSError): disconnects, timeouts,
            # a refused STARTTLS. Only a loss during DATA can have delivered the message.
            if stage == "data":
                return self._in_doubt(key, f"SMTP connection lost while sending the message ({type(exc).__name__})")
            self.ledger.release(key)
            if isinstance(exc, smtplib.SMTPResponseException):
                return self._refused(exc.smtp_code, f"the SMTP server answered {exc.smtp_code} at {stage}",
                                     "provider-error")
            return SendResult("transient", reason=f"could not reach the SMTP server ({type(exc).__name__})",
                              code="network")
        finally:
            if conn is not None:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    conn.close()
        provider_id = mail["Message-ID"]
        self.ledger.mark_sent(key, provider_id, self.clock.now())
        log.info("email %s sent via SMTP", message.message_id)
        return SendResult("sent", provider_id=provider_id)

    @staticmethod
    def _refused(code: int, reason: str, kind: str = "rejected") -> SendResult:
        # SMTP reply classes: 4xx try again later, 5xx permanent (RFC 5321 §4.2.1).
        if 400 <= int(code) < 500:
            return SendResult("transient", reason=reason, code="provider-busy")
        return SendResult("permanent", reason=reason, code=kind)

    def _in_doubt(self, key: str, reason: str) -> SendResult:
        self.ledger.mark_in_doubt(key, reason, self.clock.now())
        return SendResult("permanent", reason=f"{reason}; not sent again to avoid a duplicate", code="in-doubt")
