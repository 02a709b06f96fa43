"""The SMTP channel against a real `aiosmtpd` server on loopback: STARTTLS (trustme certificate),
AUTH, scripted refusals, a connection lost during DATA."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from notifications.channels import ChannelConfigError, build_channels
from notifications.channels.base import OutgoingMessage
from notifications.channels.ledger import SqliteSendLedger
from notifications.channels.pipeline import GuardedChannel
from notifications.channels.smtp import SmtpProvider

USER, PASSWORD = "rpm-relay", "correct horse battery staple"
TEXT = "You have a new message from Acme Clinic. Please call us at 555-0100."


class Handler:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.rcpt_replies: dict[str, str] = {}
        self.drop_after_data = False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.drop_after_data:
            # Took the message, then the connection died before the 250 reached the client.
            server.transport.close()
            return "250 OK"
        return "250 Message accepted for delivery"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and \
        auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, str(ca_path)


@pytest.fixture(scope="module")
def smtp_server(tls):
    ctx, _ = tls
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port(), tls_context=ctx,
                            require_starttls=True, authenticator=_authenticator, auth_required=True)
    controller.start()
    yield controller, handler
    controller.stop()


@pytest.fixture
def handler(smtp_server):
    _, h = smtp_server
    h.received.clear()
    h.rcpt_replies.clear()
    h.drop_after_data = False
    return h


@pytest.fixture
def ledger(tmp_path: Path):
    led = SqliteSendLedger(tmp_path / "sends.db")
    yield led
    led.close()


def guarded(provider: SmtpProvider, ledger, clock) -> GuardedChannel:
    return GuardedChannel("smtp", "email", provider, ledger=ledger, clock=clock)


def make(smtp_server, tls, ledger, clock, **kw) -> GuardedChannel:
    controller, _ = smtp_server
    kw.setdefault("password", PASSWORD)
    return guarded(SmtpProvider("127.0.0.1", controller.port, "rpm@clinic.example", username=USER,
                                security="starttls", ca_file=tls[1], clock=clock, timeout_s=10, **kw), ledger, clock)


def test_sends_over_starttls_with_login_and_a_stable_message_id(smtp_server, tls, handler, ledger, clock) -> None:
    channel = make(smtp_server, tls, ledger, clock)
    result = channel.send(OutgoingMessage("smtp-1", "email", "pat@example.org", TEXT, subject="Acme Clinic",
                                          html="<p>Acme Clinic</p>"))
    assert result.status == "sent" and result.provider_id == "<smtp-1@clinic.example>"
    [(mail_from, rcpts, content)] = handler.received
    assert (mail_from, rcpts) == ("rpm@clinic.example", ["pat@example.org"])
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Message-ID"] == "<smtp-1@clinic.example>" and parsed["Subject"] == "Acme Clinic"
    assert parsed.get_body(("plain",)).get_content().strip() == TEXT
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Acme Clinic</p>"


def test_replay_sends_nothing_twice(smtp_server, tls, handler, ledger, clock) -> None:
    message = OutgoingMessage("smtp-2", "email", "pat@example.org", TEXT)
    assert make(smtp_server, tls, ledger, clock).send(message).status == "sent"
    assert make(smtp_server, tls, ledger, clock).send(message).status == "duplicate"
    assert len(handler.received) == 1


def test_wrong_password_is_permanent_and_never_printed(smtp_server, tls, handler, ledger, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    channel = make(smtp_server, tls, ledger, clock, password="not-the-password-123")
    result = channel.send(OutgoingMessage("smtp-3", "email", "pat@example.org", TEXT))
    assert (result.status, result.code) == ("permanent", "auth")
    assert "535" in result.reason
    password = channel.provider.password
    for text in (result.reason, repr(channel), caplog.text, repr(password), str(password)):
        assert "not-the-password-123" not in text and PASSWORD not in text
    assert handler.received == []
    # Nothing went out, so once the password is fixed the message can still be sent.
    assert make(smtp_server, tls, ledger, clock).send(OutgoingMessage("smtp-3", "email", "pat@example.org",
                                                                      TEXT)).status == "sent"


def test_refused_recipient_permanent_for_5xx_transient_for_4xx(smtp_server, tls, handler, ledger, clock) -> None:
    handler.rcpt_replies["gone@example.org"] = "550 5.1.1 <gone@example.org>: mailbox unavailable"
    handler.rcpt_replies["full@example.org"] = "452 4.2.2 mailbox full"
    channel = make(smtp_server, tls, ledger, clock)
    gone = channel.send(OutgoingMessage("smtp-4", "email", "gone@example.org", TEXT))
    full = channel.send(OutgoingMessage("smtp-5", "email", "full@example.org", TEXT))
    assert (gone.status, gone.code) == ("permanent", "rejected") and "550" in gone.reason
    assert "gone@example.org" not in gone.reason  # addresses in server replies are masked
    assert full.status == "transient" and "452" in full.reason
    assert handler.received == []


def test_connection_lost_during_data_is_in_doubt_and_not_resent(smtp_server, tls, handler, ledger, clock) -> None:
    handler.drop_after_data = True
    channel = make(smtp_server, tls, ledger, clock)
    message = OutgoingMessage("smtp-6", "email", "pat@example.org", TEXT)
    first = channel.send(message)
    assert (first.status, first.code) == ("permanent", "in-doubt")
    handler.drop_after_data = False
    assert channel.send(message).code == "in-doubt"
    assert len(handler.received) == 1


def test_server_down_is_transient(tls, ledger, clock) -> None:
    channel = guarded(SmtpProvider("127.0.0.1", _free_port(), "rpm@clinic.example", security="starttls",
                                   ca_file=tls[1], clock=clock, timeout_s=5), ledger, clock)
    result = channel.send(OutgoingMessage("smtp-7", "email", "pat@example.org", TEXT))
    assert (result.status, result.code) == ("transient", "network")
    assert ledger.lookup("smtp:smtp-7") is None


def test_untrusted_certificate_is_not_accepted(smtp_server, handler, ledger, clock) -> None:
    controller, _ = smtp_server
    channel = guarded(SmtpProvider("127.0.0.1", controller.port, "rpm@clinic.example", username=USER,
                                   password=PASSWORD, security="starttls", clock=clock, timeout_s=5),
                      ledger, clock)  # system CAs only
    result = channel.send(OutgoingMessage("smtp-8", "email", "pat@example.org", TEXT))
    assert result.status == "transient" and "SSL" in result.reason
    assert handler.received == []


def test_config_refuses_login_without_tls_and_hides_the_password(ledger) -> None:
    with pytest.raises(ChannelConfigError) as err:
        build_channels({"mail": {"type": "smtp", "host": "relay.local", "sender": "rpm@clinic.example",
                                 "username": USER, "password": PASSWORD, "security": "none"}}, ledger=ledger)
    assert "'mail'" in str(err.value) and "TLS" in str(err.value) and PASSWORD not in str(err.value)
    channels = build_channels({"mail": {"type": "smtp", "host": "relay.local", "port": 587,
                                        "sender": "rpm@clinic.example", "username": USER, "password": PASSWORD}},
                              ledger=ledger)
    assert PASSWORD not in repr(channels["mail"])
