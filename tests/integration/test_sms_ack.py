"""Acknowledging an escalation by texting `ACK <code>`, through the local host
(`function_app.py`'s `on_acs_event`, fed from the bus) with the real ACS SMS SDK sending to the
local HTTPS stand-in.

What a user would check: the nurse's alert text carries a code; texting it back (in any case)
stops the chain as that nurse (Task accepted and owned, mitigation on the DetectedIssue, workflow
event, no physician text after the wait); the one reply is not repeated when the event is
re-delivered; strangers and unknown codes are refused without touching the alert; two alerts with
the same code are told apart by the sender's care team; the code does not change when the alert
is processed again.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from common.clock import FixedClock, iso
from fhirstore.paging import search_all
from handlers.acknowledge import acknowledge_by_token
from handlers.escalations import derive_ack_code
from notifications.ack_codes import ACK_CODE_ALPHABET, ACK_CODE_SYSTEM
from notifications.escalation import acknowledge
from notifications.tokens import MemoryUsedTokens, SignedTokens
from runtime.bootstrap import WORKFLOW_EVENTS, messaging
from runtime.cli_events import read_events
from tests.support.acs_server import FakeAcsServer, write_channels_config
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading

PATIENT_PHONE = "+15550100001"
PATIENT2_PHONE = "+15550100002"
NURSE_PHONE = "+15550100201"
DOCTOR_PHONE = "+15550100202"
NURSE2_PHONE = "+15550100203"
STRANGER_PHONE = "+15550100999"
QUEUE = "eg:on_acs_event"
CRISIS = {"systolic": 192, "diastolic": 118}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(DAYTIME)


@pytest.fixture
def host(acs: FakeAcsServer, tmp_path: Path, clock: FixedClock):
    config = write_channels_config(acs, tmp_path / "channels.json")
    h = make_host(tmp_path / "data", clock=clock, channels_config=config, org_name="Acme Clinic")
    h.acquire()
    s = h.services
    add_patient(s, "p1", phone=PATIENT_PHONE, programs=("hypertension",))
    for pid, phone in (("nurse-1", NURSE_PHONE), ("doctor-1", DOCTOR_PHONE), ("nurse-2", NURSE2_PHONE)):
        s.store.update({"resourceType": "Practitioner", "id": pid, "telecom": [{"system": "sms", "value": phone}]})
    care_team(s, "p1", nurse="nurse-1", physician="doctor-1")
    yield h
    h.release()
    s.close()


def care_team(services, patient: str, **members: str) -> None:
    services.store.update({"resourceType": "CareTeam", "id": f"team-{patient}", "status": "active",
                           "subject": {"reference": f"Patient/{patient}"}, "participant": [
                               {"role": [{"coding": [{"code": role}]}], "member": {"reference": f"Practitioner/{pid}"}}
                               for role, pid in members.items()]})


def crisis(host, patient: str = "p1", at: str = "2026-11-20T14:55:00Z") -> dict[str, Any]:
    """A crisis reading; returns the escalation Task it opened."""
    host.publish_device_messages([reading(patient, "blood_pressure", at, CRISIS)])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(host.services.store, "DetectedIssue", {"patient": f"Patient/{patient}"})
    return host.services.store.read("Task", issue["id"])


def sms_received(text: str, message_id: str, sender: str, *, event_id: str | None = None) -> dict[str, Any]:
    bare = sender.lstrip("+")  # ACS sends numbers with or without the '+'
    return {"id": event_id or f"evt-{message_id}", "topic": "/subscriptions/x/resourceGroups/rg/providers/"
            "Microsoft.Communication/communicationServices/acs", "subject": f"/phonenumber/{bare}",
            "eventType": "Microsoft.Communication.SMSReceived", "eventTime": "2026-11-20T15:01:00Z",
            "dataVersion": "1.0", "data": {"messageId": message_id, "from": bare, "to": "18005550100",
                                           "message": text, "receivedTimestamp": "2026-11-20T15:01:00Z"}}


def feed(host, *events: dict[str, Any]) -> None:
    for event in events:
        host.bus.publish(QUEUE, json.dumps(event).encode())
    assert host.run_until_idle(timeout_s=60)
    assert host.stats.failures == {}


def texts(acs: FakeAcsServer, number: str) -> list[str]:
    return [m["message"] for m in acs.sms_messages if m["to"] == number]


def code_in(text: str) -> str:
    match = re.search(r"\bACK ([A-Z0-9]{6})\b", text)
    assert match, "the escalation text tells the clinician which code to text back"
    return match.group(1)


def reply(host, template: str, code: str | None, locale: str = "en") -> str:
    return host.services.messages.render(template, "sms", locale, {"org_name": "Acme Clinic", "ack_code": code}).body


def ack_code_of(task: dict[str, Any]) -> list[str]:
    return [i["value"] for i in task.get("identifier", []) if i["system"] == ACK_CODE_SYSTEM]


def test_texting_the_code_back_stops_the_chain_as_that_nurse_and_a_redelivery_replies_once(host, acs, clock) -> None:
    s = host.services
    task = crisis(host)
    [nurse_text] = texts(acs, NURSE_PHONE)
    code = code_in(nurse_text)
    assert ack_code_of(task) == [code] and all(c in ACK_CODE_ALPHABET for c in code)

    # Typed in lower case, as people do.
    ack = sms_received(f"ack {code.lower()}", "Incoming_1", NURSE_PHONE)
    feed(host, ack)
    assert texts(acs, NURSE_PHONE) == [nurse_text, reply(host, "ack_ok", code)]
    task = s.store.read("Task", task["id"])
    assert (task["status"], task["owner"]) == ("accepted", {"reference": "Practitioner/nurse-1"})
    assert task["businessStatus"]["coding"][0]["code"] == "acknowledged"
    issue = s.store.read("DetectedIssue", task["id"])
    assert issue["mitigation"][-1]["author"] == {"reference": "Practitioner/nurse-1"}
    events = [e for _, e in read_events(s.settings.path("bus.db"), WORKFLOW_EVENTS) if e]
    [acked] = [e for e in events if e["eventType"] == "Vigil.Alert.Acknowledged"]
    assert acked["data"]["acknowledgedBy"] == "Practitioner/nurse-1" and NURSE_PHONE not in json.dumps(events)
    # The reply is on record as a Communication to the nurse, and carries nothing about the patient.
    [record] = [c for c in search_all(s.store, "Communication", {})
                if c.get("recipient", [{}])[0].get("reference") == "Practitioner/nurse-1"
                and c["category"][0]["coding"][0]["code"] == "notification"]
    assert record["status"] == "completed"
    assert "192" not in texts(acs, NURSE_PHONE)[1] and PATIENT_PHONE not in texts(acs, NURSE_PHONE)[1]

    # Past the nurse's 15 minutes, the sweep texts nobody: the chain stopped.
    sent = len(acs.sms_messages)
    clock.advance(timedelta(minutes=20))
    host.run_timer("escalation_sweep")
    assert texts(acs, DOCTOR_PHONE) == [] and len(acs.sms_messages) == sent

    # Event Grid re-delivers (same event, and the same message under another event id): one reply.
    feed(host, ack, sms_received(f"ack {code.lower()}", "Incoming_1", NURSE_PHONE, event_id="evt-again"))
    assert len(acs.sms_messages) == sent
    assert len(s.store.read("DetectedIssue", task["id"])["mitigation"]) == 1
    # A new text from the same nurse: her acknowledgement stands, and she is told so.
    feed(host, sms_received(f"ACK {code}", "Incoming_1b", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_ok", code)
    sent += 1

    # A colleague's late ACK and the nurse's link are harmless; the nurse stays the owner.
    feed(host, sms_received(f"ACK {code}", "Incoming_2", DOCTOR_PHONE))
    assert texts(acs, DOCTOR_PHONE) == [reply(host, "ack_already", code)]
    token = re.search(r"/api/ack/(\S+)", nurse_text).group(1)
    answer = acknowledge_by_token(messaging(s), token)
    assert (answer.status, "already acknowledged" in answer.message) == (200, True)
    assert s.store.read("Task", task["id"])["owner"] == {"reference": "Practitioner/nurse-1"}


def test_unknown_codes_strangers_and_the_patient_are_refused_without_touching_the_alert(host, acs) -> None:
    s = host.services
    task = crisis(host)
    code = code_in(texts(acs, NURSE_PHONE)[0])
    unused = next(c * 6 for c in ACK_CODE_ALPHABET if c * 6 != code)

    feed(host, sms_received(f"ACK {code}", "Incoming_10", STRANGER_PHONE),
         sms_received(f"ACK {code}", "Incoming_11", PATIENT_PHONE),  # the patient is not on their own care team
         sms_received(f"ACK {unused}", "Incoming_12", NURSE_PHONE),
         sms_received("ACK", "Incoming_13", NURSE_PHONE),
         sms_received(f"ACK {code}", "Incoming_14", NURSE2_PHONE))  # staff, but not on this patient's team
    assert texts(acs, STRANGER_PHONE) == [reply(host, "ack_refused", code)]
    assert texts(acs, PATIENT_PHONE)[-1] == reply(host, "ack_refused", code)
    assert texts(acs, NURSE_PHONE)[1:] == [reply(host, "ack_refused", unused), reply(host, "ack_refused", None)]
    assert texts(acs, NURSE2_PHONE) == [reply(host, "ack_refused", code)]
    assert "link" in reply(host, "ack_refused", code)  # the refusal says how to acknowledge instead
    after = s.store.read("Task", task["id"])
    assert (after["status"], after.get("owner")) == ("requested", None)
    assert "mitigation" not in s.store.read("DetectedIssue", task["id"])
    assert s.dead_letters.list() == []


def test_two_alerts_with_one_code_are_told_apart_by_the_senders_care_team(host, acs) -> None:
    s = host.services
    add_patient(s, "p2", phone=PATIENT2_PHONE, programs=("hypertension",))
    nurse2 = s.store.read("Practitioner", "nurse-2")
    nurse2["communication"] = [{"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}]}]
    s.store.update(nurse2)
    care_team(s, "p2", nurse="nurse-2", physician="nurse-1")  # nurse-1 covers both patients
    task1 = crisis(host, "p1")
    code = code_in(texts(acs, NURSE_PHONE)[0])
    task2 = crisis(host, "p2")
    # Force the rare collision: p2's alert gets p1's code.
    task2["identifier"] = [i for i in task2["identifier"] if i["system"] != ACK_CODE_SYSTEM]
    task2["identifier"].append({"system": ACK_CODE_SYSTEM, "value": code})
    s.store.update(task2)

    # nurse-1 is on both teams and both alerts are open: refused, pointed to the link.
    feed(host, sms_received(f"ACK {code}", "Incoming_20", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_refused", code)
    assert {s.store.read("Task", t["id"])["status"] for t in (task1, task2)} == {"requested"}

    # nurse-2 is only on p2's team: that alert, answered in her language.
    feed(host, sms_received(f"ACK {code}", "Incoming_21", NURSE2_PHONE))
    assert texts(acs, NURSE2_PHONE)[-1] == reply(host, "ack_ok", code, "es")
    assert s.store.read("Task", task2["id"])["owner"] == {"reference": "Practitioner/nurse-2"}
    assert s.store.read("Task", task1["id"])["status"] == "requested"

    # Now only p1's alert is open: nurse-1's ACK takes it.
    feed(host, sms_received(f"ACK {code}", "Incoming_22", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_ok", code)
    assert s.store.read("Task", task1["id"])["owner"] == {"reference": "Practitioner/nurse-1"}
    assert s.store.read("Task", task2["id"])["owner"] == {"reference": "Practitioner/nurse-2"}


def test_the_code_is_stable_across_reruns_and_keyed_by_the_installation_secret(host, acs, clock) -> None:
    s = host.services
    task = crisis(host)
    code = code_in(texts(acs, NURSE_PHONE)[0])

    # Replaying the reading and every FHIR event re-runs the alert path: same single code.
    host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T14:55:00Z", CRISIS)])
    for obs in search_all(s.store, "Observation", {}):
        host.bus.publish("eg:on_fhir_event", json.dumps({
            "id": f"replay-{obs['id']}", "eventType": "Microsoft.HealthcareApis.FhirResourceCreated",
            "subject": f"localhost/Observation/{obs['id']}", "eventTime": "2026-11-20T15:00:00Z",
            "data": {"resourceType": "Observation", "resourceFhirAccount": "localhost", "resourceFhirId": obs["id"],
                     "resourceVersionId": 1}, "dataVersion": "1"}).encode())
    assert host.run_until_idle(timeout_s=60)
    assert ack_code_of(s.store.read("Task", task["id"])) == [code]

    # The next level's text (the physician's) quotes the same code, and it still acknowledges.
    clock.advance(timedelta(minutes=16))
    host.run_timer("escalation_sweep")
    [doctor_text] = texts(acs, DOCTOR_PHONE)
    assert code_in(doctor_text) == code
    assert ack_code_of(s.store.read("Task", task["id"])) == [code]

    # Derived, not random: the same secret gives the same code; another installation's does not.
    assert derive_ack_code(messaging(s), task["id"]) == code
    other = SignedTokens({"k": "another-installation-secret-of-32-bytes-or-more"}, current="k",
                         used=MemoryUsedTokens(), clock=clock)
    assert derive_ack_code(replace(messaging(s), tokens=other), task["id"]) != code

    feed(host, sms_received(f"Ack {code}", "Incoming_30", DOCTOR_PHONE))
    assert texts(acs, DOCTOR_PHONE)[-1] == reply(host, "ack_ok", code)
    assert s.store.read("Task", task["id"])["owner"] == {"reference": "Practitioner/doctor-1"}



def test_a_redelivery_after_a_crash_mid_acknowledgement_completes_the_record(host, acs, clock) -> None:
    s = host.services
    task = crisis(host)
    code = code_in(texts(acs, NURSE_PHONE)[0])
    # The first delivery wrote the Task, then the process died before the DetectedIssue write.
    s.store.update(acknowledge(task, "Practitioner/nurse-1", clock.now()).task, if_match=task["meta"]["versionId"])
    assert "mitigation" not in s.store.read("DetectedIssue", task["id"])

    clock.advance(timedelta(minutes=1))
    feed(host, sms_received(f"ACK {code}", "Incoming_40", NURSE_PHONE))
    assert texts(acs, NURSE_PHONE)[-1] == reply(host, "ack_ok", code)
    [entry] = s.store.read("DetectedIssue", task["id"])["mitigation"]
    assert entry["author"] == {"reference": "Practitioner/nurse-1"} and entry["date"] == iso(DAYTIME)
