"""The real `azure-communication-sms` SDK against the local ACS stand-in (HTTPS, HMAC checked).

What a user would check: one SMS per message however often it is replayed or crashes, the
provider's per-recipient refusal kept as the reason, throttling turned into a retry time, opted-out
numbers never texted, and no key, number or body in any log line or error.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.communication import Communication

from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from notifications.acs_reports import SMS_DELIVERY_REPORT, parse_acs_delivery_report
from notifications.channels import build_channels
from notifications.channels.acs_email import AcsEmailProvider
from notifications.channels.acs_sms import AcsSmsProvider
from notifications.channels.base import OutgoingMessage
from notifications.channels.ledger import SqliteSendLedger
from notifications.channels.pipeline import GuardedChannel
from notifications.connection import parse_acs_connection_string
from notifications.consent import SmsConsentRegistry
from notifications.delivery_reports import DeliveryReport, apply_delivery_report
from notifications.dispatch import Fallback, MessageRequest, TransientDeliveryError, deliver
from tests.support.acs_server import FakeAcsServer

PATIENT_PHONE = "+15555550123"
BODY = "Acme Clinic: please call us today at 555-0100. Reply STOP to opt out."


@pytest.fixture(scope="module")
def acs():
    with FakeAcsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(acs: FakeAcsServer):
    acs.clear_failures()
    yield
    acs.clear_failures()


@pytest.fixture
def store(tmp_path: Path, clock):
    s = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def ledger(tmp_path: Path):
    led = SqliteSendLedger(tmp_path / "sends.db")
    yield led
    led.close()


def make_sms(acs: FakeAcsServer, ledger, clock, *, opt_outs=None, **kw) -> GuardedChannel:
    provider = AcsSmsProvider(parse_acs_connection_string(acs.connection_string), "+18005550100",
                              connection_verify=acs.ca_path, **kw)
    return GuardedChannel("sms", "sms", provider, ledger=ledger, opt_outs=opt_outs, clock=clock)


def make_email(acs: FakeAcsServer, clock) -> GuardedChannel:
    provider = AcsEmailProvider(parse_acs_connection_string(acs.connection_string), "DoNotReply@example.org",
                                connection_verify=acs.ca_path)
    return GuardedChannel("email", "email", provider, clock=clock)


def sms_to(acs: FakeAcsServer, number: str) -> list[dict]:
    return [m for m in acs.sms_messages if m["to"] == number]


def test_send_is_signed_shaped_and_tagged_with_the_message_id(acs, ledger, clock) -> None:
    channel = make_sms(acs, ledger, clock)
    before = len(acs.requests)
    result = channel.send(OutgoingMessage("msg-shape-1", "sms", "(555) 555-0123", BODY))
    assert result.status == "sent" and result.provider_id.startswith("Outgoing_")
    [request] = acs.requests[before:]
    assert request.auth_ok and request.status == 202 and request.query["api-version"] == ["2021-03-07"]
    sent = request.json()
    assert sent["from"] == "+18005550100"
    assert [r["to"] for r in sent["smsRecipients"]] == [PATIENT_PHONE]  # normalized to E.164
    assert sent["message"] == BODY
    assert sent["smsSendOptions"] == {"enableDeliveryReport": True, "tag": "msg-shape-1"}


def test_replay_sends_nothing_twice(acs, ledger, clock) -> None:
    channel = make_sms(acs, ledger, clock)
    first = channel.send(OutgoingMessage("msg-replay-1", "sms", "+15555550124", BODY))
    requests = len(acs.requests)
    again = make_sms(acs, ledger, clock).send(OutgoingMessage("msg-replay-1", "sms", "+15555550124", BODY))
    assert again.status == "duplicate" and again.provider_id == first.provider_id
    assert len(acs.requests) == requests  # the provider was not even asked
    assert len(sms_to(acs, "+15555550124")) == 1


def test_concurrent_sends_of_one_message_send_one_sms(acs, ledger, clock) -> None:
    channel = make_sms(acs, ledger, clock)
    results = []

    def send() -> None:
        results.append(channel.send(OutgoingMessage("msg-race-1", "sms", "+15555550125", BODY)))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sms_to(acs, "+15555550125")) == 1
    assert {r.status for r in results} <= {"duplicate", "sent", "transient"}
    assert sum(r.status == "sent" for r in results) == 1


def test_deliver_records_the_communication_and_a_redelivered_request_sends_nothing(acs, store, ledger, clock) -> None:
    channels = {"sms": make_sms(acs, ledger, clock)}
    request = MessageRequest(key="alert-1|patient|sms", channel="sms", to="+15555550126", body=BODY,
                             patient_ref="Patient/p1", recipient_ref="Patient/p1", category="alert")
    outcome = deliver(store, channels, request, clock)
    assert outcome.status == "sent"
    comm = store.read("Communication", outcome.communication_id)
    Communication.model_validate(comm)
    assert comm["status"] == "completed"
    assert {"system": "urn:vigil:provider-message-id", "value": outcome.provider_id} in comm["identifier"]
    assert deliver(store, channels, request, clock).status == "already-sent"
    assert len(sms_to(acs, "+15555550126")) == 1


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


class CrashAfterSend:
    def __init__(self, inner: GuardedChannel) -> None:
        self.inner, self.name = inner, inner.name

    def send(self, message: OutgoingMessage):
        self.inner.send(message)
        raise Crash()


def test_crash_between_send_and_record_never_sends_twice(acs, store, tmp_path, clock) -> None:
    path = tmp_path / "crash-sends.db"
    request = MessageRequest(key="alert-2|nurse|sms", channel="sms", to="+15555550127", body="Vigil alert",
                             category="alert")
    with pytest.raises(Crash):
        deliver(store, {"sms": CrashAfterSend(make_sms(acs, SqliteSendLedger(path), clock))}, request, clock)
    [comm] = search_all(store, "Communication", {"identifier": f"urn:vigil:communication|{request.message_id}"})
    assert comm["status"] == "preparation"  # the crash left it unrecorded
    # "Restart": a new process, new channel and ledger objects on the same files.
    restarted = {"sms": make_sms(acs, SqliteSendLedger(path), clock)}
    outcome = deliver(store, restarted, request, clock)
    assert outcome.status == "sent"
    assert store.read("Communication", comm["id"])["status"] == "completed"
    assert len(sms_to(acs, "+15555550127")) == 1


def test_crash_after_claim_is_in_doubt_and_falls_back_instead_of_resending(acs, store, tmp_path, clock) -> None:
    path = tmp_path / "doubt-sends.db"
    ledger = SqliteSendLedger(path)
    request = MessageRequest(
        key="alert-3|nurse|sms", channel="sms", to="+15555550128", body="Vigil alert", category="alert",
        fallbacks=(Fallback("email", "nurse@example.org", "Vigil alert", subject="Vigil alert"),),
    )
    # A worker claimed the message and died before (or while) calling the provider.
    ledger.claim(f"sms:{request.message_id}", clock.now())
    email = make_email(acs, clock)
    channels = {"sms": make_sms(acs, ledger, clock), "email": email}
    with pytest.raises(TransientDeliveryError) as busy:
        deliver(store, channels, request, clock)  # inside the lease: someone may still be sending
    assert "in progress" in str(busy.value)
    clock.advance(timedelta(minutes=5))
    outcome = deliver(store, channels, request, clock)
    assert outcome.status == "sent" and outcome.channel == "email" and len(outcome.failed_before) == 1
    failed = store.read("Communication", outcome.failed_before[0])
    assert failed["status"] == "not-done"
    assert failed["statusReason"]["coding"][0]["code"] == "in-doubt"
    assert sms_to(acs, "+15555550128") == []
    assert any(e["message"]["recipients"]["to"][0]["address"] == "nurse@example.org" for e in acs.emails)
    # Replaying the whole thing sends nothing new anywhere.
    emails = len(acs.emails)
    assert deliver(store, channels, request, clock).status == "already-sent"
    assert len(acs.emails) == emails


def test_delivery_report_resolves_an_in_doubt_send(acs, store, ledger, clock) -> None:
    channel = make_sms(acs, ledger, clock)
    ledger.claim("sms:msg-doubt-2", clock.now())
    clock.advance(timedelta(minutes=10))
    assert channel.send(OutgoingMessage("msg-doubt-2", "sms", "+15555550129", BODY)).code == "in-doubt"
    # The report arrives through the entry point the ACS event handler uses.
    report = {"eventType": SMS_DELIVERY_REPORT, "data": {
        "messageId": "Outgoing_from_report", "from": "+18005550100", "to": "+15555550129",
        "deliveryStatus": "Delivered", "receivedTimestamp": "2026-11-20T12:00:05Z", "tag": "msg-doubt-2"}}
    apply_delivery_report(store, parse_acs_delivery_report(SMS_DELIVERY_REPORT, report["data"]), ledger=ledger,
                          clock=clock)
    result = channel.send(OutgoingMessage("msg-doubt-2", "sms", "+15555550129", BODY))
    assert result.status == "duplicate" and result.provider_id == "Outgoing_from_report"


def test_per_recipient_failure_is_permanent_with_the_providers_reason_then_falls_back(acs, store, ledger,
                                                                                      clock) -> None:
    acs.fail_recipient("+15555550130", 400, "Invalid To phone number format.")
    email = make_email(acs, clock)
    channels = {"sms": make_sms(acs, ledger, clock), "email": email}
    request = MessageRequest(
        key="reminder-1|patient", channel="sms", to="+15555550130", body=BODY, category="reminder",
        fallbacks=(Fallback("email", "patient@example.org", "Please take your reading today.",
                            subject="A reminder from Acme Clinic"),),
    )
    outcome = deliver(store, channels, request, clock)
    assert outcome.status == "sent" and outcome.channel == "email"
    failed = store.read("Communication", outcome.failed_before[0])
    assert failed["status"] == "not-done"
    assert "Invalid To phone number format." in failed["statusReason"]["text"]
    assert sms_to(acs, "+15555550130") == []


def test_throttling_becomes_a_retry_time_and_the_retry_sends_once(acs, store, ledger, clock) -> None:
    channels = {"sms": make_sms(acs, ledger, clock)}
    acs.fail_next("/sms", 429, headers={"Retry-After": "90"})
    request = MessageRequest(key="alert-4|patient", channel="sms", to="+15555550131", body=BODY)
    result = channels["sms"].send(OutgoingMessage("direct-429", "sms", "+15555550131", BODY))
    assert (result.status, result.retry_after_s, result.code) == ("transient", 90.0, "throttled")
    acs.fail_next("/sms", 429, headers={"Retry-After": "90"})
    with pytest.raises(TransientDeliveryError) as retry:
        deliver(store, channels, request, clock)
    assert retry.value.retry_at == clock.now() + timedelta(seconds=90)  # Retry-After beats the 30 s backoff
    comm = store.read("Communication", retry.value.communication_id)
    assert comm["status"] == "preparation"
    assert {"url": "urn:vigil:delivery-attempts", "valueInteger": 1} in comm["extension"]
    clock.advance(timedelta(seconds=90))
    assert deliver(store, channels, request, clock).status == "sent"
    assert len(sms_to(acs, "+15555550131")) == 1


def test_server_errors_are_transient_and_gateway_timeouts_are_in_doubt(acs, ledger, clock) -> None:
    channel = make_sms(acs, ledger, clock)
    acs.fail_next("/sms", 503, headers={"Retry-After": "5"})
    busy = channel.send(OutgoingMessage("msg-503", "sms", "+15555550132", BODY))
    assert (busy.status, busy.retry_after_s) == ("transient", 5.0)
    assert channel.send(OutgoingMessage("msg-503", "sms", "+15555550132", BODY)).status == "sent"
    acs.fail_next("/sms", 504)
    doubt = channel.send(OutgoingMessage("msg-504", "sms", "+15555550133", BODY))
    assert (doubt.status, doubt.code) == ("permanent", "in-doubt")
    assert channel.send(OutgoingMessage("msg-504", "sms", "+15555550133", BODY)).code == "in-doubt"
    assert sms_to(acs, "+15555550133") == []


def test_giving_up_after_max_attempts(acs, store, ledger, clock) -> None:
    channels = {"sms": make_sms(acs, ledger, clock)}
    request = MessageRequest(key="alert-5|patient", channel="sms", to="+15555550134", body=BODY, max_attempts=2)
    acs.fail_next("/sms", 503, times=2)
    with pytest.raises(TransientDeliveryError) as retry:
        deliver(store, channels, request, clock)
    clock.set(retry.value.retry_at)
    outcome = deliver(store, channels, request, clock)
    assert outcome.status == "failed" and "gave up after 2 attempts" in outcome.reason


def test_wrong_key_is_refused_by_the_signature_check_and_the_key_is_not_reported(acs, ledger, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMTIzNDU2Nzg="
    channel = GuardedChannel("sms", "sms", AcsSmsProvider(
        parse_acs_connection_string(f"endpoint={acs.endpoint};accesskey={wrong}"), "+18005550100",
        connection_verify=acs.ca_path), ledger=ledger, clock=clock)
    result = channel.send(OutgoingMessage("msg-auth", "sms", "+15555550135", BODY))
    assert (result.status, result.code) == ("permanent", "auth")
    assert acs.requests[-1].auth_ok is False
    assert wrong not in (result.reason or "") and wrong not in repr(channel) and wrong not in caplog.text
    # And a later send with the right key is not blocked by the refused attempt.
    assert make_sms(acs, ledger, clock).send(OutgoingMessage("msg-auth", "sms", "+15555550135", BODY)).status == "sent"


def test_unreachable_service_is_transient_and_releases_the_claim(acs, ledger, clock) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    channel = GuardedChannel("sms", "sms", AcsSmsProvider(
        parse_acs_connection_string(f"endpoint=https://127.0.0.1:{port};accesskey={acs.access_key}"), "+18005550100",
        connection_verify=acs.ca_path, retry_total=0), ledger=ledger, clock=clock)
    result = channel.send(OutgoingMessage("msg-down", "sms", "+15555550136", BODY))
    assert (result.status, result.code) == ("transient", "network")
    assert ledger.lookup("sms:msg-down") is None
    assert make_sms(acs, ledger, clock).send(OutgoingMessage("msg-down", "sms", "+15555550136", BODY)).status == "sent"


def test_opted_out_number_is_never_texted_but_gets_the_one_confirmation(acs, store, ledger, clock) -> None:
    consent = SmsConsentRegistry(store, clock)
    consent.opt_out("+1 555 555 0137", keyword="STOP")
    channel = make_sms(acs, ledger, clock, opt_outs=consent)
    requests = len(acs.requests)
    blocked = channel.send(OutgoingMessage("msg-optout", "sms", "+15555550137", BODY, category="reminder"))
    assert (blocked.status, blocked.code) == ("permanent", "opted-out")
    assert len(acs.requests) == requests
    confirm = channel.send(OutgoingMessage("msg-stop-confirm", "sms", "+15555550137",
                                           "Acme Clinic: you will get no more texts. Reply START to resume.",
                                           category="consent"))
    assert confirm.status == "sent"
    consent.opt_in("+15555550137", keyword="START", received_at=clock.now() + timedelta(minutes=1))
    assert channel.send(OutgoingMessage("msg-optout", "sms", "+15555550137", BODY)).status == "sent"


def test_invalid_number_is_refused_without_calling_the_provider(acs, ledger, clock) -> None:
    requests = len(acs.requests)
    result = make_sms(acs, ledger, clock).send(OutgoingMessage("msg-bad-number", "sms", "555-0123", BODY))
    assert (result.status, result.code) == ("permanent", "invalid-recipient")
    assert "555" not in result.reason
    assert len(acs.requests) == requests


def test_no_key_number_or_body_in_logs_reprs_or_results(acs, store, ledger, clock, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    connection = parse_acs_connection_string(acs.connection_string)
    channel = make_sms(acs, ledger, clock)
    acs.fail_recipient("+15555550138", 400, "Invalid To phone number +15555550138.")
    results = [
        channel.send(OutgoingMessage("msg-secret-1", "sms", "+15555550139", BODY)),
        channel.send(OutgoingMessage("msg-secret-2", "sms", "+15555550138", BODY)),
    ]
    deliver(store, {"sms": channel}, MessageRequest(key="k-secret", channel="sms", to="+15555550139", body=BODY), clock)
    texts = [caplog.text, repr(connection), str(connection), repr(channel), *map(repr, results)]
    for text in texts:
        assert acs.access_key not in text
        assert "5555550139" not in text and "5555550138" not in text
        assert "please call us" not in text
    assert "<number>" in results[1].reason  # the provider's text, with the number masked


def test_channels_built_from_plain_config(acs, ledger, clock) -> None:
    channels = build_channels(
        {"sms": {"type": "acs_sms", "connection_string": acs.connection_string, "from": "+18005550100",
                 "connection_verify": acs.ca_path}},
        ledger=ledger, clock=clock,
    )
    assert channels["sms"].send(OutgoingMessage("msg-config", "sms", "+15555550140", BODY)).status == "sent"


# -- the pieces together, as the handlers will wire them ---------------------------------------

CHAIN_YAML = """
chains:
  crisis:
    levels:
      - {notify: [nurse], channels: [sms], wait: 15m}
      - {notify: [physician], channels: [sms], wait: 15m}
"""


def _seed_patient_and_team(store, phone: str) -> None:
    store.update({"resourceType": "Patient", "id": "p1",
                  "telecom": [{"system": "sms", "value": phone, "rank": 1}],
                  "communication": [{"language": {"coding": [{"code": "es-MX"}]}, "preferred": True}],
                  "extension": [{"url": "urn:vigil:time-zone", "valueCode": "America/Chicago"}]})
    store.update({"resourceType": "Practitioner", "id": "n1", "telecom": [{"system": "sms", "value": "+15555551101"}]})
    store.update({"resourceType": "Practitioner", "id": "d1", "telecom": [{"system": "sms", "value": "+15555551102"}]})
    store.update({"resourceType": "CareTeam", "id": "ct1", "status": "active", "subject": {"reference": "Patient/p1"},
                  "participant": [{"role": [{"text": "nurse"}], "member": {"reference": "Practitioner/n1"}},
                                  {"role": [{"text": "physician"}], "member": {"reference": "Practitioner/d1"}}]})


def test_crisis_escalation_ack_by_link_and_replay_at_library_level(acs, store, ledger, clock) -> None:
    from notifications.consent import SmsConsentRegistry
    from notifications.escalation import acknowledge, add_mitigation, advance, is_due
    from notifications.escalation_chains import load_chains
    from notifications.preferences import patient_recipient, send_at, staff_recipients
    from notifications.templates import TemplateLibrary
    from notifications.tokens import FhirUsedTokens, SignedTokens, TokenReused

    _seed_patient_and_team(store, "+15555550150")
    chain = load_chains(CHAIN_YAML)["crisis"]
    lib = TemplateLibrary()
    tokens = SignedTokens({"k1": "0123456789abcdef0123456789abcdef"}, current="k1", used=FhirUsedTokens(store),
                          clock=clock)
    channels = {"sms": make_sms(acs, ledger, clock, opt_outs=SmsConsentRegistry(store, clock))}
    org = {"org_name": "Acme Clinic", "contact_phone": "555-0100"}
    issue = store.create({"resourceType": "DetectedIssue", "status": "final", "severity": "high",
                          "patient": {"reference": "Patient/p1"}}).resource
    task = store.create({"resourceType": "Task", "status": "requested", "intent": "order",
                         "focus": {"reference": f"DetectedIssue/{issue['id']}"},
                         "for": {"reference": "Patient/p1"}}).resource
    links: dict[str, str] = {}

    def notify_patient() -> None:
        patient = patient_recipient(store.read("Patient", "p1"), now=clock.now())
        assert send_at(patient, category="alert", urgent=True, now=clock.now()) == clock.now()
        text = lib.render("alert_high", "sms", patient.locale, org)
        contact = patient.contacts_for(["sms"])[0]
        deliver(store, channels, MessageRequest(key=f"{issue['id']}|patient|sms", channel="sms", to=contact.address,
                                                body=text.body, category="alert", patient_ref="Patient/p1"), clock)

    def run(step) -> None:
        for person in staff_recipients(store, "Patient/p1", step.roles, now=clock.now()):
            token = tokens.issue(purpose="ack", subject=f"Task/{task['id']}", actor=person.ref)
            links.setdefault(person.ref, token)
            body = lib.render(step.template, "sms", person.locale, {
                **org, "severity": "high", "level": step.level, "ack_link": f"https://rpm.example.org/ack/{token}"})
            deliver(store, channels, MessageRequest(key=f"{step.notify_key}|{person.ref}|sms", channel="sms",
                                                    to=person.contacts_for(step.channels)[0].address, body=body.body,
                                                    recipient_ref=person.ref, patient_ref="Patient/p1"), clock)

    def persist(new_task: dict) -> dict:
        current = store.read("Task", task["id"])
        store.update({**new_task, "meta": current["meta"]}, if_match=current["meta"]["versionId"])
        return store.read("Task", task["id"])

    notify_patient()
    first = advance(task, chain, clock.now())
    run(first)
    task = persist(first.task)
    assert [m["to"] for m in acs.sms_messages[-2:]] == ["+15555550150", "+15555551101"]
    assert "llámenos" in acs.sms_messages[-2]["message"]  # the patient's language, PHI-free

    clock.advance(timedelta(minutes=16))
    assert is_due(task, clock.now())
    second = advance(task, chain, clock.now())
    assert (second.action, second.level, second.roles) == ("notify", 2, ("physician",))
    run(second)
    task = persist(second.task)
    assert acs.sms_messages[-1]["to"] == "+15555551102" and "(level 2)" in acs.sms_messages[-1]["message"]

    # The physician follows the link in the SMS.
    claims = tokens.verify(links["Practitioner/d1"], purpose="ack")
    ack = acknowledge(task, claims.actor, clock.now())
    task = persist(ack.task)
    updated_issue, _ = add_mitigation(store.read("DetectedIssue", issue["id"]), ack.mitigation)
    store.update(updated_issue)
    tokens.consume(claims)
    assert task["status"] == "accepted" and task["owner"] == {"reference": "Practitioner/d1"}

    clock.advance(timedelta(hours=1))
    assert not is_due(task, clock.now()) and advance(task, chain, clock.now()).action == "done"
    # A second acknowledgement (the nurse's link) is harmless; the used link is refused.
    assert acknowledge(task, tokens.verify(links["Practitioner/n1"], purpose="ack").actor, clock.now()).changed is False
    with pytest.raises(TokenReused):
        tokens.redeem(links["Practitioner/d1"], purpose="ack")

    # Replaying every step sends nothing new.
    sent = len(acs.sms_messages)
    notify_patient()
    run(first)
    run(second)
    assert len(acs.sms_messages) == sent
    assert [len(sms_to(acs, n)) for n in ("+15555550150", "+15555551101", "+15555551102")] == [1, 1, 1]
    assert [m["mitigation"][0]["author"] for m in [store.read("DetectedIssue", issue["id"])]] == [
        {"reference": "Practitioner/d1"}]


def test_stop_help_start_through_the_real_sdk(acs, store, ledger, clock) -> None:
    from notifications.consent import SmsConsentRegistry, handle_inbound_sms
    from notifications.templates import TemplateLibrary

    phone = "+15555550160"
    registry = SmsConsentRegistry(store, clock)
    lib = TemplateLibrary()
    channels = {"sms": make_sms(acs, ledger, clock, opt_outs=registry)}
    org = {"org_name": "Acme Clinic", "contact_phone": "555-0100"}

    def inbound(message_id: str, text: str) -> None:
        outcome = handle_inbound_sms(registry, phone, text, received_at=clock.now())
        if outcome.reply_template:
            body = lib.render(outcome.reply_template, "sms", "en", org).body
            deliver(store, channels, MessageRequest(key=f"inbound:{message_id}|reply", channel="sms", to=phone,
                                                    body=body, category="consent"), clock)

    def reminder(day: int) -> str:
        body = lib.render("reminder_reading", "sms", "en", org).body
        return deliver(store, channels, MessageRequest(key=f"reminder|p1|{day}", channel="sms", to=phone, body=body,
                                                       category="reminder"), clock).status

    assert reminder(1) == "sent"
    inbound("in-1", "Stop")
    inbound("in-1", "Stop")  # the same inbound event delivered twice
    assert reminder(2) == "failed"
    inbound("in-2", "HELP")
    clock.advance(timedelta(minutes=1))
    inbound("in-3", "START")
    assert reminder(3) == "sent"
    texts = [m["message"] for m in sms_to(acs, phone)]
    assert len(texts) == 5
    assert "unsubscribed" in texts[1] and "Help: call 555-0100" in texts[2] and "again" in texts[3]
    assert "reminder" in texts[0] and "reminder" in texts[4]


def test_delivery_reports_update_the_communication_and_resolve_in_doubt_sends(acs, store, ledger, clock,
                                                                             tmp_path) -> None:
    from notifications.channels.outbox import OutboxProvider

    channels = {"sms": make_sms(acs, ledger, clock),
                "email": GuardedChannel("email", "email", OutboxProvider(tmp_path / "outbox"))}

    def report(tag: str, status: str, message_id: str = "Outgoing_x") -> DeliveryReport:
        return parse_acs_delivery_report(SMS_DELIVERY_REPORT, {
            "messageId": message_id, "from": "+18005550100", "to": "+15555550170", "deliveryStatus": status,
            "deliveryStatusDetails": "No error." if status == "Delivered" else "Handset unreachable",
            "receivedTimestamp": "2026-11-20T12:00:05Z", "tag": tag})

    delivered_req = MessageRequest(key="dr-1", channel="sms", to="+15555550170", body=BODY)
    outcome = deliver(store, channels, delivered_req, clock)
    result = apply_delivery_report(store, report(delivered_req.message_id, "Delivered", outcome.provider_id),
                                   clock=clock)
    comm = store.read("Communication", outcome.communication_id)
    Communication.model_validate(comm)
    assert result.changed and comm["status"] == "completed" and comm["received"] == "2026-11-20T12:00:05Z"
    assert {"url": "urn:vigil:delivery-status", "valueCode": "delivered"} in comm["extension"]

    failing = MessageRequest(key="dr-2", channel="sms", to="+15555550171", body=BODY,
                             fallbacks=(Fallback("email", "p@example.org", "Please call us.", subject="Acme"),))
    first = deliver(store, channels, failing, clock)
    apply_delivery_report(store, report(failing.message_id, "Failed"), clock=clock)
    assert store.read("Communication", first.communication_id)["status"] == "not-done"
    again = deliver(store, channels, failing, clock)  # the handler re-runs the request: on to email
    assert again.channel == "email" and again.status == "sent"
    assert len(sms_to(acs, "+15555550171")) == 1

    doubtful = MessageRequest(key="dr-3", channel="sms", to="+15555550172", body=BODY)
    ledger.claim(f"sms:{doubtful.message_id}", clock.now() - timedelta(minutes=10))
    ledger.claim(f"sms:{doubtful.message_id}", clock.now())  # now in doubt
    assert deliver(store, channels, doubtful, clock).status == "failed"
    apply_delivery_report(store, report(doubtful.message_id, "Delivered"), ledger=ledger, clock=clock)
    [comm] = search_all(store, "Communication", {"identifier": f"urn:vigil:communication|{doubtful.message_id}"})
    assert comm["status"] == "completed"
    assert ledger.lookup(f"sms:{doubtful.message_id}").state == "sent"
