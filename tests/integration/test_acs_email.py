"""The real `azure-communication-email` SDK against the local ACS stand-in (HTTPS, HMAC checked)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from fhirstore.sqlite import SqliteFhirStore
from notifications.channels import build_channels
from notifications.channels.acs_email import OPERATION_NS, AcsEmailProvider, operation_id_for
from notifications.channels.base import OutgoingMessage
from notifications.channels.ledger import SqliteSendLedger
from notifications.channels.pipeline import GuardedChannel
from notifications.connection import parse_acs_connection_string
from notifications.dispatch import MessageRequest, deliver
from tests.support.acs_server import FakeAcsServer

TEXT = "You have a new message from Acme Clinic. Please call us at 555-0100."
HTML = "<p>You have a new message from <b>Acme Clinic</b>.</p>"


@pytest.fixture(scope="module")
def acs():
    with FakeAcsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(acs: FakeAcsServer):
    acs.clear_failures()
    acs.set_email_outcome("Succeeded")
    acs.state.duplicate_operation_status = 202
    yield


def make_email(acs: FakeAcsServer, clock, *, ledger=None, **kw) -> GuardedChannel:
    kw.setdefault("wait_for_result", True)
    kw.setdefault("polling_interval", 0)
    provider = AcsEmailProvider(parse_acs_connection_string(acs.connection_string), "DoNotReply@example.org",
                                connection_verify=acs.ca_path, **kw)
    return GuardedChannel("email", "email", provider, ledger=ledger, clock=clock)


def emails_to(acs: FakeAcsServer, address: str) -> list[dict]:
    return [e for e in acs.emails if e["message"]["recipients"]["to"][0]["address"] == address]


def test_send_shape_signature_and_deterministic_operation_id(acs, clock) -> None:
    before = len(acs.requests)
    result = make_email(acs, clock).send(
        OutgoingMessage("mail-1", "email", "pat@example.org", TEXT, subject="A message from Acme Clinic", html=HTML)
    )
    assert result.status == "sent"
    assert result.provider_id == str(uuid.uuid5(OPERATION_NS, "mail-1")) == operation_id_for("mail-1")
    post, poll = acs.requests[before:]
    assert post.auth_ok and poll.auth_ok  # the status GET is signed too
    assert post.headers["operation-id"] == result.provider_id
    assert post.json() == {
        "senderAddress": "DoNotReply@example.org",
        "recipients": {"to": [{"address": "pat@example.org"}]},
        "content": {"subject": "A message from Acme Clinic", "plainText": TEXT, "html": HTML},
        "userEngagementTrackingDisabled": True,
    }
    assert poll.method == "GET" and poll.path == f"/emails/operations/{result.provider_id}"


def test_replay_reuses_the_operation_id_so_the_service_sends_one_email(acs, clock) -> None:
    channel = make_email(acs, clock)
    message = OutgoingMessage("mail-2", "email", "two@example.org", TEXT, subject="s")
    first, second = channel.send(message), channel.send(message)
    assert first.status == second.status == "sent" and first.provider_id == second.provider_id
    assert len(emails_to(acs, "two@example.org")) == 1
    assert acs.state.operations[first.provider_id]["resubmissions"] == 1


def test_a_service_that_answers_conflict_for_a_reused_operation_id_is_a_duplicate(acs, clock) -> None:
    channel = make_email(acs, clock)
    message = OutgoingMessage("mail-3", "email", "three@example.org", TEXT, subject="s")
    assert channel.send(message).status == "sent"
    acs.state.duplicate_operation_status = 409
    again = channel.send(message)
    assert (again.status, again.provider_id) == ("duplicate", operation_id_for("mail-3"))
    assert len(emails_to(acs, "three@example.org")) == 1


def test_with_a_ledger_a_replay_does_not_call_the_service(acs, tmp_path: Path, clock) -> None:
    ledger = SqliteSendLedger(tmp_path / "sends.db")
    channel = make_email(acs, clock, ledger=ledger)
    message = OutgoingMessage("mail-4", "email", "four@example.org", TEXT, subject="s")
    assert channel.send(message).status == "sent"
    requests = len(acs.requests)
    assert channel.send(message).status == "duplicate"
    assert len(acs.requests) == requests


def test_failed_operation_is_permanent_with_the_reason(acs, clock) -> None:
    acs.set_email_outcome("Failed", {"code": "EmailDroppedAllRecipientsSuppressed",
                                      "message": "Message was dropped for all recipients."})
    result = make_email(acs, clock).send(OutgoingMessage("mail-5", "email", "five@example.org", TEXT, subject="s"))
    assert (result.status, result.code) == ("permanent", "rejected")
    assert "EmailDroppedAllRecipientsSuppressed" in result.reason


def test_throttling_and_server_errors_are_transient(acs, clock) -> None:
    channel = make_email(acs, clock)
    acs.fail_next("/emails:send", 429, headers={"Retry-After": "12"})
    throttled = channel.send(OutgoingMessage("mail-6", "email", "six@example.org", TEXT, subject="s"))
    assert (throttled.status, throttled.retry_after_s) == ("transient", 12.0)
    acs.fail_next("/emails:send", 500)
    assert channel.send(OutgoingMessage("mail-6", "email", "six@example.org", TEXT, subject="s")).status == "transient"
    assert channel.send(OutgoingMessage("mail-6", "email", "six@example.org", TEXT, subject="s")).status == "sent"
    assert len(emails_to(acs, "six@example.org")) == 1


def test_bad_request_is_permanent(acs, clock) -> None:
    acs.fail_next("/emails:send", 400, body={"error": {"code": "BadRequest", "message": "Invalid email address."}})
    result = make_email(acs, clock).send(OutgoingMessage("mail-7", "email", "seven@example.org", TEXT, subject="s"))
    assert (result.status, result.code) == ("permanent", "rejected")
    assert "Invalid email address." in result.reason


def test_without_polling_one_request_and_the_operation_id_is_the_provider_id(acs, clock) -> None:
    before = len(acs.requests)
    result = make_email(acs, clock, wait_for_result=False).send(
        OutgoingMessage("mail-8", "email", "eight@example.org", TEXT, subject="s"))
    assert (result.status, result.provider_id) == ("sent", operation_id_for("mail-8"))
    assert [r.method for r in acs.requests[before:]] == ["POST"]


def test_deliver_through_configured_email_channel(acs, tmp_path: Path, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    channels = build_channels({"email": {"type": "acs_email", "connection_string": acs.connection_string,
                                         "sender": "DoNotReply@example.org", "connection_verify": acs.ca_path}},
                              clock=clock)
    request = MessageRequest(key="mail-deliver", channel="email", to="nine@example.org", body=TEXT,
                             subject="A message from Acme Clinic", html=HTML)
    outcome = deliver(store, channels, request, clock)
    assert outcome.status == "sent"
    assert store.read("Communication", outcome.communication_id)["status"] == "completed"
    assert deliver(store, channels, request, clock).status == "already-sent"
    assert len(emails_to(acs, "nine@example.org")) == 1
    assert emails_to(acs, "nine@example.org")[0]["message"]["content"]["html"] == HTML
    assert acs.access_key not in caplog.text and "nine@example.org" not in caplog.text
    store.close()


def test_email_delivery_report_failure_marks_the_communication(acs, tmp_path: Path, clock) -> None:
    from notifications.acs_reports import EMAIL_DELIVERY_REPORT, parse_acs_delivery_report
    from notifications.delivery_reports import apply_delivery_report

    store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    channels = {"email": make_email(acs, clock, wait_for_result=False)}
    outcome = deliver(store, channels, MessageRequest(key="mail-report", channel="email", to="ten@example.org",
                                                      body=TEXT, subject="s"), clock)
    event = {"type": EMAIL_DELIVERY_REPORT, "data": {  # a CloudEvents envelope this time
        "sender": "DoNotReply@example.org", "recipient": "ten@example.org", "messageId": outcome.provider_id,
        "status": "Bounced", "deliveryStatusDetails": {"statusMessage": "550 mailbox ten@example.org unknown"},
        "deliveryAttemptTimeStamp": "2026-11-20T12:01:00Z"}}
    result = apply_delivery_report(store, parse_acs_delivery_report(event["type"], event["data"]), clock=clock)
    comm = store.read("Communication", outcome.communication_id)
    assert result.changed and not result.delivered and comm["status"] == "not-done"
    assert comm["statusReason"]["text"].startswith("the provider reported Bounced: 550")
    store.close()
