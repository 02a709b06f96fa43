"""A message accepted by ACS and later reported undelivered goes out on the recipient's next channel.

Real pipeline on the embedded store, the real ACS SMS and Email SDKs against the local HTTPS stand-in
(`tests/support/acs_server.py`), delivery reports fed through `on_acs_event` (bus queue
`eg:on_acs_event`). What a user would check: a crisis alert SMS that the carrier could not deliver
reaches the patient by email, once, however often and in whatever order the reports come; a
delivered SMS never causes an email; a message with nowhere else to go is recorded as failed; an
opted-out patient gets no SMS as a fallback; nothing of the patient's lands in a log line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.communication import Communication

from common.clock import FixedClock
from fhirstore.paging import search_all
from handlers.acknowledge import record_acknowledgement
from handlers.acs_events import handle_acs_event
from handlers.sweeps import run_alert_sweep
from notifications.acs_reports import SMS_DELIVERY_REPORT, parse_acs_delivery_report
from notifications.channels.base import OutgoingMessage, SendResult
from notifications.delivery_reports import apply_delivery_report
from notifications.dispatch import Fallback, MessageRequest, TransientDeliveryError, deliver
from notifications.fallback_plan import FALLBACK_PLAN_EXT
from runtime.bootstrap import WORKFLOW_EVENTS, acs_deps, messaging
from runtime.cli_events import read_events
from tests.support.acs_server import FakeAcsServer, write_channels_config
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading

PHONE = "+15550100001"
EMAIL = "pat.one@example.org"
QUEUE = "eg:on_acs_event"
CRISIS = {"systolic": 186, "diastolic": 112}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(DAYTIME)


@pytest.fixture
def host(acs: FakeAcsServer, tmp_path: Path, clock: FixedClock):
    config = write_channels_config(acs, tmp_path / "channels.json", email="acs_email", delivery_reports=True)
    h = make_host(tmp_path / "data", clock=clock, channels_config=config, contact_phone="(555) 010-0100")
    h.acquire()
    add_patient(h.services, "p1")
    _add_email(h.services, "p1", EMAIL)
    yield h
    h.release()
    h.services.close()


def _add_email(services, patient_id: str, address: str, *, first: bool = False) -> None:
    patient = services.store.read("Patient", patient_id)
    patient["telecom"].append({"system": "email", "value": address, "rank": 2})
    if first:
        patient["extension"] = [{"url": "urn:vigil:notification-preferences",
                                 "extension": [{"url": "channel-order", "valueString": "email,sms"}]}]
    services.store.update(patient)


# -- helpers ------------------------------------------------------------------------------------

def feed(host, *events: dict[str, Any]) -> None:
    for event in events:
        host.bus.publish(QUEUE, json.dumps(event).encode())
    assert host.run_until_idle(timeout_s=60)
    assert host.stats.failures == {}


def crisis_alert(host, patient: str = "p1", time: str = "2026-11-20T09:30:00-05:00") -> dict[str, Any]:
    """Fire a crisis reading through the pipeline; return the patient's alert Communication."""
    host.publish_device_messages([reading(patient, "blood_pressure", time, CRISIS)])
    assert host.run_until_idle(timeout_s=60)
    [comm] = alert_messages(host, patient)
    return comm


def alert_messages(host, patient: str = "p1") -> list[dict[str, Any]]:
    return [c for c in search_all(host.services.store, "Communication", {"subject": f"Patient/{patient}"})
            if c["category"][0]["coding"][0]["code"] == "alert"]


def medium(comm: dict[str, Any]) -> str:
    return comm["medium"][0]["coding"][0]["code"]


def message_id(comm: dict[str, Any]) -> str:
    return next(i["value"] for i in comm["identifier"] if i["system"] == "urn:vigil:communication")


def provider_id(comm: dict[str, Any]) -> str:
    return next(i["value"] for i in comm["identifier"] if i["system"] == "urn:vigil:provider-message-id")


def sms_report(comm: dict[str, Any], status: str, event_id: str, *, at: str = "2026-11-20T15:00:04Z") -> dict:
    return {"id": event_id, "subject": "/phonenumber/15550100001", "dataVersion": "1.0",
            "eventType": SMS_DELIVERY_REPORT, "eventTime": at,
            "data": {"messageId": provider_id(comm), "from": "18005550100", "to": "15550100001",
                     "deliveryStatus": status, "deliveryStatusDetails": "Handset unreachable",
                     "deliveryAttempts": [{"timestamp": at, "segmentsSucceeded": 0, "segmentsFailed": 1}],
                     "receivedTimestamp": at, "tag": message_id(comm)}}


def email_report(comm: dict[str, Any], status: str, event_id: str) -> dict:
    return {"id": event_id, "eventType": "Microsoft.Communication.EmailDeliveryReportReceived",
            "subject": f"sender/DoNotReply@mail.example/message/{provider_id(comm)}", "dataVersion": "1.0",
            "eventTime": "2026-11-20T15:01:00Z",
            "data": {"sender": "DoNotReply@mail.example", "recipient": EMAIL, "messageId": provider_id(comm),
                     "status": status, "deliveryStatusDetails": {"statusMessage": "Mailbox unavailable"},
                     "deliveryAttemptTimeStamp": "2026-11-20T15:00:59Z"}}


def emails_to(acs: FakeAcsServer, address: str = EMAIL) -> list[dict[str, Any]]:
    return [e["message"] for e in acs.emails if e["message"]["recipients"]["to"][0]["address"] == address]


def email_posts(acs: FakeAcsServer) -> int:
    return sum(1 for r in acs.requests if r.method == "POST" and r.path.startswith("/emails:send"))


def texts_to(acs: FakeAcsServer, number: str = PHONE) -> list[str]:
    return [m["message"] for m in acs.sms_messages if m["to"] == number]


def failed_events(host) -> list[dict[str, Any]]:
    return [e for _, e in read_events(host.services.settings.path("bus.db"), WORKFLOW_EVENTS)
            if e and e["eventType"] == "Vigil.Message.Failed"]


def handle(host, event: dict[str, Any]):
    """The handler called directly, to see its outcome (the host path returns nothing)."""
    return handle_acs_event(event, acs_deps(host.services))


# -- tests --------------------------------------------------------------------------------------

def test_a_failed_alert_sms_is_sent_by_email_once_and_replays_send_nothing(host, acs) -> None:
    s = host.services
    sms = crisis_alert(host)
    assert (sms["status"], medium(sms)) == ("completed", "sms") and len(texts_to(acs)) == 1
    Communication.model_validate(sms)  # the fallback plan is a valid FHIR extension
    assert emails_to(acs) == []

    outcome = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert outcome.action == "delivery-report" and outcome.changed
    assert outcome.fallback is not None and (outcome.fallback.status, outcome.fallback.channel) == ("sent", "email")
    assert outcome.fallback.failed_before == (sms["id"],)
    assert outcome.published == ("Vigil.Message.Failed",)

    [email] = emails_to(acs)
    expected = s.messages.render("alert_high", "email", "en", {"org_name": s.settings.org_name,
                                                              "contact_phone": s.settings.contact_phone, "link": ""})
    assert email["content"]["subject"] == expected.subject and email["content"]["plainText"] == expected.body

    sms = s.store.read("Communication", sms["id"])
    assert sms["status"] == "not-done" and "Failed" in sms["statusReason"]["text"]
    fallback = s.store.read("Communication", outcome.fallback.communication_id)
    Communication.model_validate(fallback)
    assert (fallback["status"], medium(fallback), fallback["category"][0]["coding"][0]["code"]) == (
        "completed", "email", "alert")
    assert fallback["subject"] == sms["subject"] and fallback["about"] == sms["about"]
    assert fallback["recipient"] == [{"reference": "Patient/p1"}]
    assert fallback["payload"] == [{"contentString": expected.body}]
    assert not any(e["url"] == FALLBACK_PLAN_EXT for e in fallback.get("extension", []))  # nothing left after email

    # The same report again (Event Grid re-delivery), and under another event id: nothing new goes out.
    version = fallback["meta"]["versionId"]
    feed(host, sms_report(sms, "Failed", "dr-1"), sms_report(sms, "Failed", "dr-1-again"))
    again = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert again.fallback is not None and again.fallback.status == "already-sent"
    assert again.fallback.communication_id == fallback["id"]
    assert len(emails_to(acs)) == 1 and email_posts(acs) == 1 and len(texts_to(acs)) == 1
    assert s.store.read("Communication", fallback["id"])["meta"]["versionId"] == version
    assert len(alert_messages(host)) == 2

    # A "Delivered" after the "Failed" (out of order) settles the SMS as delivered; then a late Failed
    # is stale. Neither sends anything.
    feed(host, sms_report(sms, "Delivered", "dr-2", at="2026-11-20T15:00:09Z"))
    assert s.store.read("Communication", sms["id"])["status"] == "completed"
    late = handle(host, sms_report(sms, "Failed", "dr-3"))
    assert (late.changed, late.fallback, late.published) == (False, None, ())
    assert len(emails_to(acs)) == 1 and email_posts(acs) == 1 and len(alert_messages(host)) == 2
    assert len({e["id"] for e in failed_events(host)}) == 1


def test_the_sweep_and_the_report_send_the_same_fallback_once(host, acs) -> None:
    """A synchronous walk of the chain (the alert sweep re-running the patient's message) and the
    delivery report's fallback use one key: whichever comes first sends, the other finds it sent."""
    s = host.services
    sms = crisis_alert(host)
    # The failure is recorded (say the handler crashed right after), the sweep runs before the re-delivery.
    report = sms_report(sms, "Failed", "dr-1")
    assert apply_delivery_report(s.store, parse_acs_delivery_report(SMS_DELIVERY_REPORT, report["data"]),
                                 clock=s.clock).failed
    run_alert_sweep(messaging(s), s.rulesets)
    assert len(emails_to(acs)) == 1
    [sent_by_sweep] = [c for c in alert_messages(host) if medium(c) == "email"]

    outcome = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert outcome.fallback is not None
    assert (outcome.fallback.status, outcome.fallback.communication_id) == ("already-sent", sent_by_sweep["id"])
    run_alert_sweep(messaging(s), s.rulesets)
    assert len(emails_to(acs)) == 1 and email_posts(acs) == 1
    # (The sweep also fires absence rules of their own; the crisis SMS itself went out once.)
    assert texts_to(acs).count(sms["payload"][0]["contentString"]) == 1


def test_a_delivered_report_never_falls_back(host, acs) -> None:
    s = host.services
    sms = crisis_alert(host)
    outcome = handle(host, sms_report(sms, "Delivered", "dr-1"))
    assert (outcome.changed, outcome.fallback, outcome.published) == (True, None, ())
    assert s.store.read("Communication", sms["id"])["status"] == "completed"
    # A failure reported after it (stale, out of order) changes nothing.
    feed(host, sms_report(sms, "Failed", "dr-0", at="2026-11-20T15:00:01Z"))
    comm = s.store.read("Communication", sms["id"])
    assert comm["status"] == "completed" and comm["received"] == "2026-11-20T15:00:04Z"
    assert emails_to(acs) == [] and email_posts(acs) == 0 and failed_events(host) == []
    assert len(alert_messages(host)) == 1


@pytest.mark.parametrize("status", ["Unknown", "Sent", "Pending"])
def test_an_unknown_or_intermediate_status_is_recorded_and_nothing_is_sent(host, acs, status) -> None:
    s = host.services
    sms = crisis_alert(host)
    outcome = handle(host, sms_report(sms, status, "dr-1"))
    assert (outcome.changed, outcome.fallback, outcome.published) == (True, None, ())
    comm = s.store.read("Communication", sms["id"])
    assert comm["status"] == "completed"
    assert {"url": "urn:vigil:delivery-status", "valueCode": status.lower()} in comm["extension"]
    assert emails_to(acs) == [] and failed_events(host) == []


def test_an_expired_sms_falls_back_too(host, acs) -> None:
    sms = crisis_alert(host)
    outcome = handle(host, sms_report(sms, "Expired", "dr-1"))
    assert outcome.fallback is not None and outcome.fallback.status == "sent"
    assert len(emails_to(acs)) == 1


def test_a_message_without_fallbacks_just_records_the_failure(host, acs) -> None:
    s = host.services
    add_patient(s, "p2", phone="+15550100002")  # SMS only
    sms = crisis_alert(host, "p2")
    outcome = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert outcome.changed and outcome.fallback is None and outcome.published == ("Vigil.Message.Failed",)
    assert s.store.read("Communication", sms["id"])["status"] == "not-done"
    assert not any(e["url"] == FALLBACK_PLAN_EXT for e in sms.get("extension", []))
    assert len(alert_messages(host, "p2")) == 1 and emails_to(acs) == [] and email_posts(acs) == 0
    [event] = failed_events(host)
    assert event["data"]["communication"] == f"Communication/{sms['id']}" and event["data"]["reasonCode"] == "failed"


def test_a_bounced_email_falls_back_to_sms_unless_the_patient_opted_out(host, acs) -> None:
    s = host.services
    add_patient(s, "p3", phone="+15550100003")
    _add_email(s, "p3", "three@example.org", first=True)
    add_patient(s, "p4", phone="+15550100004")
    _add_email(s, "p4", "four@example.org", first=True)
    feed(host, _stop_from("15550100004"))  # the patient texted STOP (and got the one confirmation)
    assert s.consent.status("+15550100004") == "opted-out"
    sms_before = len(acs.sms_messages)

    for patient, number in (("p3", "+15550100003"), ("p4", "+15550100004")):
        email = crisis_alert(host, patient)
        assert medium(email) == "email"
        texts_before = len(texts_to(acs, number))
        outcome = handle(host, email_report(email, "Bounced", f"er-{patient}"))
        assert outcome.fallback is not None and outcome.fallback.channel == "sms"
        if patient == "p3":
            assert outcome.fallback.status == "sent" and len(texts_to(acs, number)) == texts_before + 1
        else:
            # Consent holds for fallbacks as for any SMS: refused, recorded, announced.
            assert outcome.fallback.status == "failed" and len(texts_to(acs, number)) == texts_before
            refused = s.store.read("Communication", outcome.fallback.communication_id)
            assert refused["status"] == "not-done"
            assert refused["statusReason"]["coding"][0]["code"] == "opted-out"
            assert outcome.published == ("Vigil.Message.Failed", "Vigil.Message.Failed")
    assert len(acs.sms_messages) == sms_before + 1


def _stop_from(sender: str) -> dict[str, Any]:
    return {"id": "stop-1", "subject": f"/phonenumber/{sender}", "dataVersion": "1.0",
            "eventType": "Microsoft.Communication.SMSReceived", "eventTime": "2026-11-20T14:00:00Z",
            "data": {"messageId": "Incoming_stop_1", "from": sender, "to": "18005550100", "message": "STOP",
                     "receivedTimestamp": "2026-11-20T14:00:00Z"}}


def test_a_failed_fallback_walks_on_to_the_next_one(host, acs) -> None:
    """Each fallback keeps the rest of the plan: SMS fails, the email bounces, the outbox gets it,
    under the key a synchronous walk of the same chain would use."""
    s = host.services
    request = MessageRequest(
        key="chain-1|staff", channel="sms", to="+15550100009", body="Alert: please review.",
        patient_ref="Patient/p1", about_ref="DetectedIssue/di1", category="escalation", tags={"template": "escalation"},
        fallbacks=(Fallback("email", "nurse@example.org", "Alert: please review (email).", subject="Vigil alert",
                            html="<p>Alert: please review.</p>"),
                   Fallback("outbox", "care-team", "Alert: nobody reached.")))
    sms = s.store.read("Communication", deliver(s.store, s.channels, request, s.clock).communication_id)
    first = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert first.fallback is not None and (first.fallback.status, first.fallback.channel) == ("sent", "email")
    email = s.store.read("Communication", first.fallback.communication_id)
    assert message_id(email) == request.fallback_request().message_id
    assert emails_to(acs, "nurse@example.org")[0]["content"]["html"] == "<p>Alert: please review.</p>"

    second = handle(host, email_report(email, "Bounced", "er-1"))
    assert second.fallback is not None and (second.fallback.status, second.fallback.channel) == ("sent", "outbox")
    last = s.store.read("Communication", second.fallback.communication_id)
    assert message_id(last) == request.fallback_request().fallback_request().message_id
    assert last["category"][0]["coding"][0]["code"] == "escalation" and last["about"] == [
        {"reference": "DetectedIssue/di1"}]
    [filed] = [m for m in s.channels["outbox"].provider.messages() if m["to"] == "care-team"]
    assert (filed["body"], filed["tags"]) == ("Alert: nobody reached.", {"template": "escalation"})
    # The synchronous walk of the same request finds every step done.
    replay = deliver(s.store, s.channels, request, s.clock)
    assert (replay.status, replay.communication_id) == ("already-sent", last["id"])
    assert len(s.channels["outbox"].provider.messages()) == 1 and email_posts(acs) == 1


class _Flaky:
    name = "email"

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []
        self.fail = True

    def send(self, message: OutgoingMessage) -> SendResult:
        self.sent.append(message)
        if self.fail:
            return SendResult(
                "transient", reason="ACS is unavailable (HTTP 503)", retry_after_s=60, code="provider-error"
            )
        return SendResult("sent", provider_id="op-1")


def test_a_transient_failure_of_the_fallback_retries_the_report(host, acs, clock) -> None:
    s = host.services
    sms = crisis_alert(host)
    flaky = _Flaky()
    deps = replace(acs_deps(s), channels={**s.channels, "email": flaky})
    with pytest.raises(TransientDeliveryError) as err:
        handle_acs_event(sms_report(sms, "Failed", "dr-1"), deps)
    assert err.value.retry_at == clock.now() + timedelta(seconds=60)  # the report is retried then
    assert s.store.read("Communication", sms["id"])["status"] == "not-done"
    flaky.fail = False
    with pytest.raises(TransientDeliveryError):  # re-delivered inside the wait: still nothing sent
        handle_acs_event(sms_report(sms, "Failed", "dr-1"), deps)
    assert len(flaky.sent) == 1
    clock.advance(timedelta(seconds=61))
    outcome = handle_acs_event(sms_report(sms, "Failed", "dr-1"), deps)
    assert outcome.fallback is not None and outcome.fallback.status == "sent" and len(flaky.sent) == 2


def test_a_reminder_reported_undelivered_in_quiet_hours_is_recorded_not_sent(host, acs, clock) -> None:
    """A reminder SMS sent at 20:55 (the patient's zone, UTC by default) is reported failed at 21:10:
    the email fallback is not sent in quiet hours, nor later (a reminder is only useful on its day):
    it is recorded not sent, the report is handled (not retried), and nothing ever sends it."""
    s = host.services
    clock.set(DAYTIME.replace(hour=20, minute=55))
    request = MessageRequest(key="reminder|p1|bp|2026-11-20", channel="sms", to=PHONE, body="Time for your reading.",
                             patient_ref="Patient/p1", recipient_ref="Patient/p1", category="reminder",
                             fallbacks=(Fallback("email", EMAIL, "Time for your reading.", "A reminder"),
                                        Fallback("outbox", "p1-box", "Time for your reading.")))
    assert deliver(s.store, s.channels, request, clock).status == "sent"
    [sms] = [c for c in search_all(s.store, "Communication", {"subject": "Patient/p1"}) if medium(c) == "sms"]
    clock.set(DAYTIME.replace(hour=21, minute=10))
    outcome = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert outcome.fallback is not None and (outcome.fallback.status, outcome.fallback.channel) == ("withheld", "email")
    assert outcome.published == ("Vigil.Message.Failed",)  # the SMS's failure; the decision is not a failure
    assert s.store.read("Communication", sms["id"])["status"] == "not-done"  # the failure is recorded
    skipped = s.store.read("Communication", outcome.fallback.communication_id)
    Communication.model_validate(skipped)
    assert message_id(skipped) == request.fallback_request().message_id  # the key the fallback would use
    assert (skipped["status"], medium(skipped)) == ("not-done", "email") and "sent" not in skipped
    assert skipped["statusReason"]["coding"] == [{"system": "urn:vigil:withheld", "code": "quiet-hours"}]
    assert skipped["statusReason"]["text"] == ("reminder fallback not sent: the patient's quiet hours; "
                                               "the reminder is no longer timely")
    version = skipped["meta"]["versionId"]

    # Event Grid's re-delivery (through the host: handled, not failed), after quiet hours too, and a
    # synchronous replay of the whole chain: nothing goes out on any channel, nothing is rewritten.
    feed(host, sms_report(sms, "Failed", "dr-1"))
    clock.set(DAYTIME.replace(day=21, hour=8, minute=0))
    again = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert again.fallback is not None and (again.fallback.status, again.fallback.communication_id) == (
        "withheld", skipped["id"])
    replay = deliver(s.store, s.channels, request, clock)
    assert (replay.status, replay.communication_id) == ("withheld", skipped["id"])
    assert emails_to(acs) == [] and email_posts(acs) == 0 and s.channels["outbox"].provider.messages() == []
    assert s.store.read("Communication", skipped["id"])["meta"]["versionId"] == version
    assert len({e["id"] for e in failed_events(host)}) == 1


def test_a_moderate_alert_reported_undelivered_in_quiet_hours_falls_back_when_they_end(host, acs, clock) -> None:
    """A moderate (non-urgent) alert SMS sent at 20:55 is reported failed at 21:10: the email waits for
    the end of quiet hours, when the alert sweep sends it, once."""
    s = host.services
    clock.set(DAYTIME.replace(hour=20, minute=55))
    # Low SpO2 (COPD, moderate): not an instruction that cannot wait, unlike a low glucose.
    host.publish_device_messages([reading("p1", "spo2", "2026-11-20T20:50:00+00:00", {"percent": 86})])
    assert host.run_until_idle(timeout_s=60)
    [sms] = alert_messages(host)
    assert medium(sms) == "sms"
    plan = next(e for e in sms["extension"] if e["url"] == FALLBACK_PLAN_EXT)
    assert {"url": "urgent", "valueBoolean": False} in plan["extension"]
    clock.set(DAYTIME.replace(hour=21, minute=10))
    outcome = handle(host, sms_report(sms, "Failed", "dr-1", at="2026-11-20T21:10:00Z"))
    assert outcome.fallback is None and outcome.fallback_held_until == DAYTIME.replace(day=21, hour=8, minute=0)
    assert outcome.published == ("Vigil.Message.Failed",)
    feed(host, sms_report(sms, "Failed", "dr-1", at="2026-11-20T21:10:00Z"))  # handled, not retried
    clock.set(DAYTIME.replace(hour=23, minute=40))
    run_alert_sweep(messaging(s), s.rulesets)  # still quiet hours: nothing
    assert emails_to(acs) == [] and len(alert_messages(host)) == 1

    clock.set(DAYTIME.replace(day=21, hour=8, minute=0))
    run_alert_sweep(messaging(s), s.rulesets)
    [email] = emails_to(acs)
    [fallback] = [c for c in alert_messages(host) if c["id"] != sms["id"] and medium(c) == "email"]
    assert fallback["status"] == "completed" and fallback["about"] == sms["about"]
    late = handle(host, sms_report(sms, "Failed", "dr-1", at="2026-11-20T21:10:00Z"))  # a late re-delivery
    assert late.fallback is not None and (late.fallback.status, late.fallback.communication_id) == (
        "already-sent", fallback["id"])
    run_alert_sweep(messaging(s), s.rulesets)
    assert len(emails_to(acs)) == 1 and email_posts(acs) == 1


def test_in_quiet_hours_an_urgent_alert_falls_back_at_once_and_an_update_is_recorded_not_sent(
        host, acs, clock) -> None:
    s = host.services
    clock.set(DAYTIME.replace(hour=23, minute=0))
    sms = crisis_alert(host, time="2026-11-20T22:59:00+00:00")  # high severity: urgent, sent in quiet hours
    outcome = handle(host, sms_report(sms, "Failed", "dr-1", at="2026-11-20T23:01:00Z"))
    assert outcome.fallback is not None and (outcome.fallback.status, outcome.fallback.channel) == ("sent", "email")
    assert len(emails_to(acs)) == 1

    # A low-severity update message (which the alert sweep never re-sends): recorded not sent.
    request = MessageRequest(key="ep-9|update:Observation/o1|patient", channel="sms", to=PHONE, body="An update.",
                             patient_ref="Patient/p1", recipient_ref="Patient/p1", about_ref="DetectedIssue/ep-9",
                             category="alert", tags={"template": "alert_low"},
                             fallbacks=(Fallback("email", EMAIL, "An update.", "An update"),))
    update = s.store.read("Communication", deliver(s.store, s.channels, request, clock).communication_id)
    outcome = handle(host, sms_report(update, "Failed", "dr-2", at="2026-11-20T23:02:00Z"))
    assert outcome.fallback is not None and outcome.fallback.status == "withheld"
    skipped = s.store.read("Communication", outcome.fallback.communication_id)
    assert skipped["statusReason"]["coding"][0]["code"] == "quiet-hours"
    assert "quiet hours" in skipped["statusReason"]["text"] and len(emails_to(acs)) == 1


class _TopicDown:
    def publish(self, events) -> None:
        raise ConnectionError("workflow topic unreachable")


def test_a_workflow_topic_outage_does_not_hold_back_the_fallback(host, acs, caplog) -> None:
    sms = crisis_alert(host)
    caplog.set_level(logging.WARNING)
    deps = replace(acs_deps(host.services), workflow=_TopicDown())
    outcome = handle_acs_event(sms_report(sms, "Failed", "dr-1"), deps)  # handled: no exception
    assert outcome.fallback is not None and outcome.fallback.status == "sent" and len(emails_to(acs)) == 1
    assert outcome.published == ()
    assert "workflow event for a failed message not published: ConnectionError" in caplog.text
    assert "unreachable" not in caplog.text
    # Once the topic is back, a re-delivered report announces the failure and sends nothing new.
    again = handle(host, sms_report(sms, "Failed", "dr-1"))
    assert again.published == ("Vigil.Message.Failed",) and again.fallback.status == "already-sent"
    assert len(emails_to(acs)) == 1


def test_an_escalation_fallback_is_not_sent_once_the_alert_is_acknowledged(host, acs) -> None:
    """Nurse A acknowledges; nurse B's escalation SMS is reported failed after that: no email to B.
    Before the acknowledgement the same kind of report does reach the nurse by email."""
    s = host.services
    crisis_alert(host)
    [task] = search_all(s.store, "Task", {"patient": "Patient/p1"})
    issue_ref = task["focus"]["reference"]

    def escalation_sms(nurse: str) -> dict[str, Any]:
        request = MessageRequest(
            key=f"{task['id']}|level-1|PractitionerRole/{nurse}", channel="sms", to="+15550100042",
            body="Alert: please review.", patient_ref="Patient/p1", about_ref=issue_ref,
            recipient_ref=f"PractitionerRole/{nurse}", category="escalation", tags={"template": "escalation"},
            fallbacks=(Fallback("email", f"{nurse}@example.org", "Alert: please review.", "Vigil alert"),))
        return s.store.read("Communication", deliver(s.store, s.channels, request, s.clock).communication_id)

    sms_a, sms_b = escalation_sms("nurse-a"), escalation_sms("nurse-b")
    before = handle(host, sms_report(sms_a, "Failed", "dr-a"))
    assert before.fallback is not None and before.fallback.status == "sent"
    assert len(emails_to(acs, "nurse-a@example.org")) == 1

    assert record_acknowledgement(messaging(s), task["id"], "PractitionerRole/nurse-a").status == "acknowledged"
    after = handle(host, sms_report(sms_b, "Failed", "dr-b"))
    assert after.fallback is not None and after.fallback.status == "withheld"
    assert after.published == ("Vigil.Message.Failed",)
    skipped = s.store.read("Communication", after.fallback.communication_id)
    assert skipped["status"] == "not-done" and skipped["recipient"] == [{"reference": "PractitionerRole/nurse-b"}]
    assert skipped["statusReason"]["coding"] == [{"system": "urn:vigil:withheld", "code": "alert-closed"}]
    assert "alert is no longer open" in skipped["statusReason"]["text"]
    feed(host, sms_report(sms_b, "Failed", "dr-b"))
    assert emails_to(acs, "nurse-b@example.org") == [] and email_posts(acs) == 1


def test_a_plan_that_does_not_match_its_message_sends_nothing(host, acs, caplog) -> None:
    s = host.services
    sms = crisis_alert(host)
    plan = next(e for e in sms["extension"] if e["url"] == FALLBACK_PLAN_EXT)
    plan["extension"][0]["valueString"] = "someone-else|patient"  # the key no longer hashes to the identifier
    s.store.update(sms)
    caplog.set_level(logging.WARNING)
    outcome = handle(host, sms_report(s.store.read("Communication", sms["id"]), "Failed", "dr-1"))
    assert outcome.fallback is None and emails_to(acs) == []
    assert "does not match its identifier" in caplog.text


def test_no_address_or_message_text_in_log_lines(host, acs, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sms = crisis_alert(host)
    feed(host, sms_report(sms, "Failed", "dr-1"))
    assert len(emails_to(acs)) == 1
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "was reported undelivered on sms; trying email" in lines
    body = emails_to(acs)[0]["content"]["plainText"]
    for secret in ("5550100001", EMAIL, "pat.one", body, sms["payload"][0]["contentString"]):
        assert secret not in lines
