"""Azure Communication Services events through the local host (`on_acs_event`, fed from the bus
queue `eg:on_acs_event`), with the real ACS SMS SDK sending to the local HTTPS stand-in.

What a user would check: a patient who texts STOP gets one confirmation and no further SMS (even
when an alert fires), HELP gets the help text, START re-enables; a re-delivered STOP is answered
once; delivery reports update the Communication and a failed one is announced as a workflow
event; malformed events land in the dead-letter store with a reason; nothing is silently dropped.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.clock import FixedClock
from fhirstore.paging import search_all
from notifications.dispatch import MessageRequest, deliver
from runtime.bootstrap import WORKFLOW_EVENTS
from runtime.cli_events import read_events
from tests.support.acs_server import FakeAcsServer, write_channels_config
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading

PHONE = "+15550100001"  # add_patient's default number
HELP_LINE = "(555) 010-0100"
QUEUE = "eg:on_acs_event"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(DAYTIME)


@pytest.fixture
def host(acs: FakeAcsServer, tmp_path: Path, clock: FixedClock):
    config = write_channels_config(acs, tmp_path / "channels.json")
    h = make_host(tmp_path / "data", clock=clock, bus_on_clock=True, channels_config=config, contact_phone=HELP_LINE)
    h.acquire()
    add_patient(h.services, "p1")
    yield h
    h.release()
    h.services.close()


def sms_received(text: str, message_id: str, *, at: str = "2026-11-20T14:00:00Z", sender: str = "15550100001",
                 event_id: str | None = None) -> dict[str, Any]:
    # ACS documents `from` both with and without the leading '+': use the bare form here.
    return {"id": event_id or f"evt-{message_id}", "topic": "/subscriptions/x/resourceGroups/rg/providers/"
            "Microsoft.Communication/communicationServices/acs", "subject": f"/phonenumber/{sender}",
            "eventType": "Microsoft.Communication.SMSReceived", "eventTime": at, "dataVersion": "1.0",
            "data": {"messageId": message_id, "from": sender, "to": "18005550100", "message": text,
                     "receivedTimestamp": at}}


def feed(host, *events: dict[str, Any]) -> None:
    for event in events:
        host.bus.publish(QUEUE, json.dumps(event).encode())
    assert host.run_until_idle(timeout_s=60)


def texts_to(acs: FakeAcsServer, number: str = PHONE) -> list[str]:
    return [m["message"] for m in acs.sms_messages if m["to"] == number]


def rendered(host, template: str, locale: str = "en") -> str:
    context = {"org_name": host.services.settings.org_name, "contact_phone": HELP_LINE}
    return host.services.messages.render(template, "sms", locale, context).body


def workflow_events(host) -> list[dict[str, Any]]:
    return [e for _, e in read_events(host.services.settings.path("bus.db"), WORKFLOW_EVENTS) if e]


def test_stop_silences_sms_help_still_answers_and_start_reenables(host, acs) -> None:
    s = host.services
    feed(host, sms_received("Stop", "Incoming_1", at="2026-11-20T14:00:00Z"))
    assert s.consent.status(PHONE) == "opted-out"
    assert texts_to(acs) == [rendered(host, "consent_stop")]

    # A crisis reading opens an alert, but the patient's alert SMS is not sent.
    host.publish_device_messages([
        reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", {"systolic": 186, "diastolic": 112})])
    assert host.run_until_idle(timeout_s=60)
    assert len(search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})) == 1
    assert texts_to(acs) == [rendered(host, "consent_stop")]
    alert_sms = [c for c in search_all(s.store, "Communication", {"subject": "Patient/p1"})
                 if c["category"][0]["coding"][0]["code"] == "alert"]
    assert alert_sms and all(c["status"] == "not-done" for c in alert_sms)
    assert alert_sms[0]["statusReason"]["coding"][0]["code"] == "opted-out"

    # HELP is answered even while opted out, with the program's help line.
    feed(host, sms_received("help", "Incoming_2", at="2026-11-20T14:05:00Z"))
    assert texts_to(acs)[1:] == [rendered(host, "consent_help")]
    assert HELP_LINE in texts_to(acs)[1]

    feed(host, sms_received("START", "Incoming_3", at="2026-11-20T14:10:00Z"))
    assert s.consent.status(PHONE) == "opted-in"
    assert texts_to(acs)[2:] == [rendered(host, "consent_start")]
    reminder = MessageRequest(key="reminder-after-start", channel="sms", to=PHONE, body="Time for your reading.",
                              patient_ref="Patient/p1", category="reminder")
    assert deliver(s.store, s.channels, reminder, s.clock).status == "sent"
    assert texts_to(acs)[-1] == "Time for your reading."


def test_a_redelivered_stop_is_answered_once_and_a_second_stop_gets_no_second_confirmation(host, acs) -> None:
    stop = sms_received("STOP", "Incoming_10")
    feed(host, stop, stop)  # two deliveries of the same event, as Event Grid may do
    feed(host, stop)
    # The same inbound message under another event id (e.g. a second subscription): still one reply.
    feed(host, sms_received("STOP", "Incoming_10", event_id="evt-via-another-subscription"))
    feed(host, sms_received("stop please", "Incoming_11", at="2026-11-20T14:01:00Z"))
    assert texts_to(acs) == [rendered(host, "consent_stop")]
    # HELP is answered every time it is sent, but once per inbound message however often it arrives.
    help_ = sms_received("HELP", "Incoming_12", at="2026-11-20T14:02:00Z")
    feed(host, help_, help_, {**help_, "id": "evt-via-another-subscription-2"})
    assert texts_to(acs) == [rendered(host, "consent_stop"), rendered(host, "consent_help")]
    replies = [c for c in search_all(host.services.store, "Communication", {})
               if c["category"][0]["coding"][0]["code"] == "consent"]
    assert [(c["status"], c["subject"]["reference"]) for c in replies] == [("completed", "Patient/p1")] * 2
    assert host.stats.failures == {}


def test_a_reply_that_failed_transiently_is_sent_on_the_retry(host, acs, clock) -> None:
    acs.fail_next("/sms", 503)
    host.bus.publish(QUEUE, json.dumps(sms_received("STOP", "Incoming_20")).encode())
    host.run_once()
    assert host.stats.failures == {"on_acs_event": 1}
    assert host.services.consent.status(PHONE) == "opted-out"  # recorded before any reply
    assert texts_to(acs) == []
    clock.advance(timedelta(minutes=2))  # past the reply's backoff
    assert host.run_until_idle(timeout_s=60)
    assert texts_to(acs) == [rendered(host, "consent_stop")]
    assert host.services.dead_letters.list() == []


def test_spanish_keyword_and_preferred_language_get_a_spanish_reply(host, acs) -> None:
    s = host.services
    add_patient(s, "p2", phone="+15550100002")
    patient = s.store.read("Patient", "p2")
    patient["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}]},
                                 "preferred": True}]
    s.store.update(patient)
    feed(host, sms_received("Alto", "Incoming_30", sender="+15550100002"))
    assert texts_to(acs, "+15550100002") == [rendered(host, "consent_stop", "es")]
    # An unknown number that writes in Spanish is answered in Spanish too.
    feed(host, sms_received("AYUDA", "Incoming_31", sender="+15550100999"))
    assert texts_to(acs, "+15550100999") == [rendered(host, "consent_help", "es")]


def test_a_cloudevents_envelope_is_accepted(host, acs) -> None:
    event = {"specversion": "1.0", "id": "ce-1", "type": "Microsoft.Communication.SMSReceived",
             "source": "/subscriptions/x/providers/Microsoft.Communication/communicationServices/acs",
             "subject": "/phonenumber/15550100001", "time": "2026-11-20T14:00:00Z",
             "data": {"messageId": "Incoming_40", "from": "+15550100001", "to": "+18005550100",
                      "message": "UNSUBSCRIBE", "receivedTimestamp": "2026-11-20T14:00:00Z"}}
    feed(host, event)
    assert host.services.consent.status(PHONE) == "opted-out"
    assert texts_to(acs) == [rendered(host, "consent_stop")]


def test_an_ack_reply_that_matches_no_alert_is_refused_once(host, acs) -> None:
    # Acknowledging by SMS code is covered in test_sms_ack.py; here: not a consent keyword, not
    # dropped, answered once however often it arrives.
    ack = sms_received("ACK 4821", "Incoming_50")
    feed(host, ack, ack)
    assert texts_to(acs) == [rendered(host, "ack_refused")]
    assert host.services.dead_letters.list() == [] and host.services.consent.status(PHONE) == "unknown"


def _send(host, key: str, channel: str = "sms", to: str = PHONE) -> dict[str, Any]:
    s = host.services
    outcome = deliver(s.store, s.channels, MessageRequest(key=key, channel=channel, to=to, body="Please call us.",
                                                          patient_ref="Patient/p1", about_ref="DetectedIssue/di1",
                                                          subject="A message"), s.clock)
    assert outcome.status == "sent"
    return s.store.read("Communication", outcome.communication_id)


def _sms_report(comm: dict[str, Any], status: str, event_id: str) -> dict[str, Any]:
    tag = comm["identifier"][0]["value"]
    return {"id": event_id, "subject": "/phonenumber/15550100001", "dataVersion": "1.0",
            "eventType": "Microsoft.Communication.SMSDeliveryReportReceived", "eventTime": "2026-11-20T15:00:05Z",
            "data": {"messageId": "Outgoing_x", "from": "18005550100", "to": "15550100001",
                     "deliveryStatus": status, "deliveryStatusDetails": "No answer from +15550100001",
                     "deliveryAttempts": [{"timestamp": "2026-11-20T15:00:04Z", "segmentsSucceeded": 1,
                                           "segmentsFailed": 0}],
                     "receivedTimestamp": "2026-11-20T15:00:04Z", "tag": tag}}


def _delivery_status(comm: dict[str, Any]) -> str | None:
    return next((e["valueCode"] for e in comm.get("extension", []) if e["url"] == "urn:vigil:delivery-status"), None)


def test_delivery_reports_update_the_communication_and_failures_are_published(host) -> None:
    s = host.services
    delivered = _send(host, "report-delivered")
    failed = _send(host, "report-failed")
    feed(host, _sms_report(delivered, "Delivered", "dr-1"), _sms_report(failed, "Failed", "dr-2"))

    delivered = s.store.read("Communication", delivered["id"])
    assert (delivered["status"], _delivery_status(delivered)) == ("completed", "delivered")
    assert delivered["received"] == "2026-11-20T15:00:04Z"
    failed = s.store.read("Communication", failed["id"])
    assert (failed["status"], _delivery_status(failed)) == ("not-done", "failed")
    assert "Failed" in failed["statusReason"]["text"] and PHONE not in failed["statusReason"]["text"]

    [event] = [e for e in workflow_events(host) if e["eventType"] == "Vigil.Message.Failed"]
    assert event["subject"] == f"Communication/{failed['id']}"
    assert event["data"] == {"communication": f"Communication/{failed['id']}", "patient": "Patient/p1",
                             "about": "DetectedIssue/di1", "channel": "sms", "reasonCode": "failed"}
    # The same report again (a re-delivery) changes nothing and announces nothing new.
    feed(host, _sms_report(failed, "Failed", "dr-2"))
    assert len([e for e in workflow_events(host) if e["eventType"] == "Vigil.Message.Failed"]) == 1
    assert s.store.read("Communication", failed["id"])["meta"]["versionId"] == failed["meta"]["versionId"]


def test_an_email_bounce_marks_the_message_failed(host) -> None:
    comm = _send(host, "email-bounce", channel="email", to="patient@example.org")
    provider_id = next(i["value"] for i in comm["identifier"] if i["system"] == "urn:vigil:provider-message-id")
    feed(host, {"id": "er-1", "eventType": "Microsoft.Communication.EmailDeliveryReportReceived",
                "subject": f"sender/DoNotReply@mail.example/message/{provider_id}", "dataVersion": "1.0",
                "eventTime": "2026-11-20T15:01:00Z",
                "data": {"sender": "DoNotReply@mail.example", "recipient": "patient@example.org",
                         "messageId": provider_id, "status": "Bounced",
                         "deliveryStatusDetails": {"statusMessage": "Mailbox unavailable"},
                         "deliveryAttemptTimeStamp": "2026-11-20T15:00:59Z"}})
    comm = host.services.store.read("Communication", comm["id"])
    assert (comm["status"], _delivery_status(comm)) == ("not-done", "bounced")
    [event] = [e for e in workflow_events(host) if e["eventType"] == "Vigil.Message.Failed"]
    assert (event["data"]["channel"], event["data"]["reasonCode"]) == ("email", "bounced")


def test_a_report_for_an_unknown_message_and_unknown_event_types_are_ignored(host) -> None:
    report = _sms_report({"identifier": [{"value": "0" * 32}]}, "Delivered", "dr-unknown")
    chat = {"id": "chat-1", "eventType": "Microsoft.Communication.ChatMessageReceived", "subject": "thread/1",
            "eventTime": "2026-11-20T15:00:00Z", "dataVersion": "1.0", "data": {"messageBody": "hi"}}
    feed(host, report, chat)
    assert host.services.dead_letters.list() == []
    assert host.stats.invocations.get("on_acs_event") == 2 and host.stats.failures == {}


def _bad(change: dict[str, Any]) -> dict[str, Any]:
    event = sms_received("STOP", "Incoming_bad")
    for key, value in change.items():
        if key.startswith("data."):
            if value is None:
                event["data"].pop(key[5:])
            else:
                event["data"][key[5:]] = value
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(("change", "detail"), [
    ({"data.from": None}, "data.from is missing"),
    ({"data.from": "not a number"}, "data.from is not a phone number"),
    ({"data.messageId": ""}, "data.messageId is missing"),
    ({"data.receivedTimestamp": "2026-11-20 14:00:00"}, "data.receivedTimestamp"),
    ({"data.message": 42}, "data.message must be text"),
    ({"data": "STOP"}, "'data' must be a JSON object"),
])
def test_malformed_events_are_dead_lettered_with_a_reason(host, acs, change, detail) -> None:
    event = _bad(change)
    feed(host, event)
    [letter] = host.services.dead_letters.list()
    assert (letter.reason, letter.topic) == ("invalid_acs_event", QUEUE)
    assert detail in letter.detail and "Microsoft.Communication.SMSReceived" in letter.detail
    assert PHONE not in letter.detail
    assert json.loads(letter.payload)["id"] == event["id"]
    assert texts_to(acs) == [] and host.services.consent.status(PHONE) == "unknown"
    assert host.stats.failures == {}  # parked at once, not retried


def test_a_delivery_report_without_a_status_is_dead_lettered(host) -> None:
    report = _sms_report(_send(host, "no-status"), "Delivered", "dr-bad")
    del report["data"]["deliveryStatus"]
    feed(host, report)
    [letter] = host.services.dead_letters.list()
    assert letter.reason == "invalid_acs_event" and "data.deliveryStatus is missing" in letter.detail


def test_no_phone_number_or_message_text_in_log_lines(host, acs, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    feed(host, sms_received("Stop texting me", "Incoming_60"), sms_received("HELP", "Incoming_61",
                                                                           at="2026-11-20T14:02:00Z"))
    assert len(texts_to(acs)) == 2
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "inbound sms Incoming_60: opt-out" in lines  # the handler did log, without the details
    for secret in ("5550100001", "Stop texting me", "unsubscribed"):
        assert secret not in lines


def test_timestamps_order_stop_and_start_whatever_order_they_arrive_in(host, acs) -> None:
    later_stop = sms_received("STOP", "Incoming_70", at="2026-11-20T14:30:00Z")
    earlier_start = sms_received("START", "Incoming_71", at="2026-11-20T14:00:00Z")
    feed(host, later_stop)
    feed(host, earlier_start)  # arrives late: the patient's last word was STOP
    assert host.services.consent.status(PHONE) == "opted-out"
    assert texts_to(acs) == [rendered(host, "consent_stop")]
    assert datetime(2026, 11, 20, 14, 30, tzinfo=UTC) <= datetime.fromisoformat(
        host.services.store.read("Consent", _consent_id())["dateTime"].replace("Z", "+00:00"))


def _consent_id() -> str:
    from notifications.consent import consent_id

    return consent_id(PHONE)
