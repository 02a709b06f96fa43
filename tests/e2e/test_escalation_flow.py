"""The escalation chain end to end through function_app.py on the local host, with the real ACS SMS
SDK talking to the local HTTPS stand-in: a crisis reading texts the patient and the nurse; with no
acknowledgement in the wait the physician is texted; the physician's link acknowledges and the
chain stops; replaying every event sends nothing new."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from common.clock import FixedClock
from fhirstore.paging import search_all
from notifications.escalation import chain_of, level_of
from runtime.http_server import running_server
from tests.support.acs_server import FakeAcsServer, write_channels_config
from tests.support.pipeline import DAYTIME, add_patient, make_host, reading

PATIENT_PHONE = "+15550100001"
NURSE_PHONE = "+15550100201"
DOCTOR_PHONE = "+15550100202"
TOKEN = "local-test-token"


@pytest.fixture
def acs():
    with FakeAcsServer() as server:
        yield server


@pytest.fixture
def flow(acs: FakeAcsServer, tmp_path: Path):
    clock = FixedClock(DAYTIME)
    config = write_channels_config(acs, tmp_path / "channels.json")
    host = make_host(tmp_path / "data", clock=clock, channels_config=config, local_token=TOKEN,
                     org_name="Acme Clinic", contact_phone="(555) 010-0100")
    host.acquire()
    s = host.services
    add_patient(s, "p1", phone=PATIENT_PHONE, programs=("hypertension",))
    for pid, phone in (("nurse-1", NURSE_PHONE), ("doctor-1", DOCTOR_PHONE)):
        s.store.update({"resourceType": "Practitioner", "id": pid, "telecom": [{"system": "sms", "value": phone}]})
    s.store.update({"resourceType": "CareTeam", "id": "team-p1", "status": "active",
                    "subject": {"reference": "Patient/p1"}, "participant": [
                        {"role": [{"coding": [{"code": "nurse"}]}], "member": {"reference": "Practitioner/nurse-1"}},
                        {"role": [{"coding": [{"code": "physician"}]}],
                         "member": {"reference": "Practitioner/doctor-1"}}]})
    with running_server(host, TOKEN) as url:
        s.settings.__dict__["public_base_url"] = url  # links in the texts point at this server
        yield host, clock, url
    host.release()
    s.close()


def texts(acs: FakeAcsServer, number: str) -> list[str]:
    return [m["message"] for m in acs.sms_messages if m["to"] == number]


def link_in(text: str) -> str:
    match = re.search(r"https?://\S+/api/ack/\S+", text)
    assert match, "the escalation text carries an acknowledgement link"
    return match.group(0).rstrip(".")


def test_crisis_escalates_until_acknowledged_and_a_replay_sends_nothing(flow, acs: FakeAcsServer) -> None:
    host, clock, url = flow
    s = host.services
    host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T14:55:00Z",
                                          {"systolic": 192, "diastolic": 118})])
    assert host.run_until_idle(timeout_s=60)

    # Patient and nurse texted at once; the patient's text carries no reading, name or condition.
    [patient_text] = texts(acs, PATIENT_PHONE)
    assert "192" not in patient_text and "pressure" not in patient_text.lower() and "Acme Clinic" in patient_text
    [nurse_text] = texts(acs, NURSE_PHONE)
    assert texts(acs, DOCTOR_PHONE) == []
    [issue] = search_all(s.store, "DetectedIssue", {})
    task = s.store.read("Task", issue["id"])
    assert task["status"] == "requested" and task["businessStatus"]["coding"][0]["code"] == "level-1"

    # No acknowledgement within the nurse's 15 minutes: the sweep texts the physician.
    clock.advance(timedelta(minutes=10))
    host.run_timer("escalation_sweep")
    assert texts(acs, DOCTOR_PHONE) == []
    clock.advance(timedelta(minutes=6))
    host.run_timer("escalation_sweep")
    [doctor_text] = texts(acs, DOCTOR_PHONE)
    assert s.store.read("Task", issue["id"])["businessStatus"]["coding"][0]["code"] == "level-2"

    # A forged link is refused clearly; the physician's link acknowledges.
    assert httpx.post(f"{url}/api/ack/v1.forged.token").status_code == 403
    link = link_in(doctor_text)
    assert "Acknowledge" in httpx.get(link).text  # a GET (link preview) does not acknowledge
    assert s.store.read("Task", issue["id"])["status"] == "requested"
    answer = httpx.post(link)
    assert answer.status_code == 200 and "Acknowledged" in answer.text
    task = s.store.read("Task", issue["id"])
    assert (task["status"], task["owner"]) == ("accepted", {"reference": "Practitioner/doctor-1"})
    issue = s.store.read("DetectedIssue", issue["id"])
    assert issue["mitigation"][-1]["author"] == {"reference": "Practitioner/doctor-1"}
    # A second click is harmless; the nurse's older link too (the alert is already acknowledged).
    assert httpx.post(link).status_code == 200
    assert httpx.post(link_in(nurse_text)).status_code == 200
    assert s.store.read("Task", issue["id"])["owner"] == {"reference": "Practitioner/doctor-1"}

    # The chain stopped: hours later, nobody else is texted.
    sent_before = len(acs.sms_messages)
    clock.advance(timedelta(hours=3))
    host.run_timer("escalation_sweep")
    assert len(acs.sms_messages) == sent_before

    # Replaying every FHIR event (and the device message) sends nothing new.
    for obs in search_all(s.store, "Observation", {}):
        event = {"id": f"replay-{obs['id']}", "eventType": "Microsoft.HealthcareApis.FhirResourceCreated",
                 "subject": f"localhost/Observation/{obs['id']}", "eventTime": "2026-11-20T15:00:00Z",
                 "data": {"resourceType": "Observation", "resourceFhirAccount": "localhost",
                          "resourceFhirId": obs["id"], "resourceVersionId": 1}, "dataVersion": "1"}
        host.bus.publish("eg:on_fhir_event", json.dumps(event).encode())
    host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T14:55:00Z",
                                          {"systolic": 192, "diastolic": 118})])
    assert host.run_until_idle(timeout_s=60)
    assert len(acs.sms_messages) == sent_before
    assert len(search_all(s.store, "DetectedIssue", {})) == 1

    # The lifecycle went out as workflow events, with references only.
    events = [json.loads(x.body) for x in host.bus.receive("vigil-events", max_messages=100)]
    kinds = {e["eventType"] for e in events}
    assert {"Vigil.Alert.EpisodeOpened", "Vigil.Alert.Escalated", "Vigil.Alert.Acknowledged"} <= kinds
    assert PATIENT_PHONE not in json.dumps(events) and "192" not in json.dumps(events)


def test_a_first_escalation_text_held_back_by_the_provider_goes_out_on_the_next_sweep(
        flow, acs: FakeAcsServer) -> None:
    """The episode opens (the event is done), but the nurse's first text meets a transient ACS
    failure: the Task already names its chain, so the next escalation sweep sends it, once."""
    host, clock, _ = flow
    s = host.services
    acs.fail_recipient(NURSE_PHONE, status=503, error="Service unavailable")
    host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T14:55:00Z",
                                          {"systolic": 192, "diastolic": 118})])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(s.store, "DetectedIssue", {})
    assert len(texts(acs, PATIENT_PHONE)) == 1
    assert acs.sms_messages and texts(acs, NURSE_PHONE) == []  # the attempt was refused, not recorded
    task = s.store.read("Task", issue["id"])
    assert (task["status"], level_of(task), chain_of(task)) == ("requested", 0, "crisis")

    acs.clear_failures()
    clock.advance(timedelta(minutes=1))
    host.run_timer("escalation_sweep")
    [nurse_text] = texts(acs, NURSE_PHONE)
    assert "ACK " in nurse_text
    assert s.store.read("Task", issue["id"])["businessStatus"]["coding"][0]["code"] == "level-1"
    host.run_timer("escalation_sweep")
    assert len(texts(acs, NURSE_PHONE)) == 1
