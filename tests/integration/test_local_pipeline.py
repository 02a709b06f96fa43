"""The vertical slice through the local host: device message → Observation → FHIR event →
care-plan rules → alert episode (DetectedIssue, Task) → Communication + outbox file.
Real SQLite files throughout."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.observation import Observation

from fhirstore.paging import search_all
from tests.support.pipeline import add_patient, count, make_host, reading


@pytest.fixture
def host(data_dir: Path):
    h = make_host(data_dir)
    h.acquire()
    add_patient(h.services, "p1")
    yield h
    h.release()
    h.services.close()


def test_crisis_reading_opens_one_alert_and_records_messages(host) -> None:
    host.publish_device_messages([
        reading("p1", "blood_pressure", "2026-11-20T07:30:00-05:00", {"systolic": 186, "diastolic": 112}),
        reading("p1", "heart_rate", "2026-11-20T07:30:00-05:00", {"bpm": 80}),
    ])
    assert host.run_until_idle(timeout_s=60)
    s = host.services
    obs = search_all(s.store, "Observation", {"subject": "Patient/p1"})
    assert len(obs) == 2
    for o in obs:
        Observation.model_validate(o)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    DetectedIssue.model_validate(issue)
    assert issue["code"]["coding"][0]["code"] == "htn-crisis"
    assert issue["severity"] == "high"
    bp = next(o for o in obs if o["code"]["coding"][0]["code"] == "85354-9")
    assert {"reference": f"Observation/{bp['id']}"} in issue["implicated"]
    assert "180" in issue["detail"] and "Patient" not in issue["detail"]
    task = s.store.read("Task", issue["id"])
    assert (task["status"], task["focus"]["reference"]) == ("requested", f"DetectedIssue/{issue['id']}")

    comms = search_all(s.store, "Communication", {})
    assert sorted(c["status"] for c in comms) == ["completed", "completed"]
    for c in comms:
        Communication.model_validate(c)
    files = s.channels["outbox"].provider.messages()
    assert sorted(f["to"] for f in files) == ["+15550100001", "care-team"]
    patient_sms = next(f for f in files if f["to"].startswith("+"))
    # PHI-minimal: no reading, no condition in what the patient receives.
    assert "186" not in patient_sms["body"] and "pressure" not in patient_sms["body"].lower()


def test_replaying_messages_and_events_creates_nothing_and_sends_nothing(host) -> None:
    msgs = [reading("p1", "spo2", "2026-11-20T09:00:00+01:00", {"percent": 87})]
    host.publish_device_messages(msgs)
    host.run_until_idle(timeout_s=60)
    s = host.services
    before = (count(s, "Observation"), count(s, "DetectedIssue"), count(s, "Communication"),
              len(s.channels["outbox"].provider.messages()))
    assert before == (1, 1, 2, 2)
    # Same messages again, and every FHIR event delivered a second time.
    host.publish_device_messages(msgs)
    [obs] = search_all(s.store, "Observation", {})
    event = {"id": "replayed", "eventType": "Microsoft.HealthcareApis.FhirResourceCreated",
             "subject": f"localhost/Observation/{obs['id']}", "eventTime": "2026-11-20T08:00:00Z",
             "data": {"resourceType": "Observation", "resourceFhirAccount": "localhost",
                      "resourceFhirId": obs["id"], "resourceVersionId": 1}, "dataVersion": "1"}
    host.bus.publish("eg:on_fhir_event", json.dumps(event).encode())
    host.run_until_idle(timeout_s=60)
    after = (count(s, "Observation"), count(s, "DetectedIssue"), count(s, "Communication"),
             len(s.channels["outbox"].provider.messages()))
    assert after == before
    assert s.store.read("Observation", obs["id"])["meta"]["versionId"] == "1"


def test_a_second_crossing_within_the_open_episode_updates_it_without_new_messages(host) -> None:
    host.publish_device_messages([
        reading("p1", "blood_pressure", "2026-11-20T07:30:00-05:00", {"systolic": 181, "diastolic": 100}),
        reading("p1", "blood_pressure", "2026-11-20T09:30:00-05:00", {"systolic": 190, "diastolic": 104}),
    ])
    host.run_until_idle(timeout_s=60)
    [issue] = search_all(host.services.store, "DetectedIssue", {})
    assert issue["severity"] == "high" and len(issue["implicated"]) >= 2
    assert "valueInteger': 2" in str(issue["extension"])  # the episode counted both readings
    # Within the rule's 4 h notification cool-down: no second round of messages.
    assert len(host.services.channels["outbox"].provider.messages()) == 2


def test_a_patient_not_enrolled_in_any_program_gets_no_alert(data_dir: Path) -> None:
    h = make_host(data_dir)
    h.acquire()
    add_patient(h.services, "p9", programs=())
    h.publish_device_messages([reading("p9", "spo2", "2026-11-20T09:00:00Z", {"percent": 85})])
    h.run_until_idle(timeout_s=60)
    assert count(h.services, "Observation") == 1 and count(h.services, "DetectedIssue") == 0
    h.release()
    h.services.close()


def test_malformed_messages_are_dead_lettered_and_the_batch_goes_on(host) -> None:
    good = reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 71})
    batch = [
        b'{"deviceId": "p1-dev", "patientId": ',
        reading("p1", "ecg", "2026-11-20T07:30:00Z", {"mv": 1}),
        json.dumps({"deviceId": "p1-dev", "patientId": "p1", "type": "heart_rate", "values": {"bpm": 1}}).encode(),
        json.dumps({"deviceId": "p1-dev", "patientId": "p1", "type": "heart_rate", "time": "2026-11-20T07:30:00Z",
                    "values": {"bpm": 70}, "pad": "x" * 300_000}).encode(),
        reading("nobody", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 71}),
        reading("p1", "heart_rate", "2026-11-20T07:31:00Z", {"bpm": 2000}),
        reading("p1", "heart_rate", "2026-11-20T07:32:00", {"bpm": 70}),
        good,
    ]
    host.publish_device_messages(batch)
    host.run_until_idle(timeout_s=60)
    s = host.services
    assert count(s, "Observation") == 1
    reasons = {d.reason: d for d in s.dead_letters.list()}
    assert set(reasons) == {"invalid_json", "no_template_matched", "missing_required_value", "oversized",
                            "unknown_device", "out_of_range", "naive_timestamp"}
    assert "line 1" in reasons["invalid_json"].detail
    assert "limit" in reasons["oversized"].detail
    assert "plausible range" in reasons["out_of_range"].detail and "2000" not in reasons["out_of_range"].detail
    assert reasons["missing_required_value"].properties.get("expression")  # names the expression involved
    assert reasons["invalid_json"].payload == batch[0]  # kept as received, for replay


def test_a_device_moved_to_another_patient_is_picked_up_at_once(host) -> None:
    s = host.services
    add_patient(s, "p2", programs=())
    host.publish_device_messages([reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70})])
    host.run_until_idle(timeout_s=60)
    device = s.store.read("Device", "p1-dev")
    s.store.update({**device, "patient": {"reference": "Patient/p2"}})
    host.publish_device_messages([
        reading("p2", "heart_rate", "2026-11-20T08:30:00Z", {"bpm": 71}, device_id="p1-dev"),
        reading("p1", "heart_rate", "2026-11-20T08:31:00Z", {"bpm": 72}, device_id="p1-dev"),
    ])
    host.run_until_idle(timeout_s=60)
    assert count(s, "Observation", subject="Patient/p2") == 1
    assert count(s, "Observation", subject="Patient/p1") == 1
    [letter] = s.dead_letters.list()
    assert letter.reason == "device_patient_mismatch"


def test_failing_function_is_retried_then_dead_lettered_without_blocking_others(data_dir: Path) -> None:
    import azure.functions as func

    from runtime.bootstrap import bootstrap
    from runtime.host import LocalHost
    from runtime.settings import Settings

    calls: list[str] = []
    app = func.FunctionApp()

    @app.function_name("flaky")
    @app.event_hub_message_trigger(arg_name="events", connection="C", event_hub_name="hub", cardinality="many")
    def flaky(events: list[func.EventHubEvent]) -> None:
        for e in events:
            calls.append(e.get_body().decode())
            if e.get_body() == b"poison":
                raise RuntimeError("cannot handle this one")

    services = bootstrap(Settings.from_env({}, data_dir=data_dir, bus_max_attempts=3))
    host = LocalHost(services, app)
    host.bus.base_backoff_s = 0.01
    host.publish_device_messages([b"ok-1", b"poison", b"ok-2"])
    assert host.run_until_idle(timeout_s=30)
    # The batch failed at the poison message, so each message was retried alone: the good ones
    # were not held back, and only the poison message used up its attempts.
    assert (calls.count("ok-1"), calls.count("ok-2"), calls.count("poison")) == (2, 1, 4)
    [letter] = services.dead_letters.list()
    assert (letter.reason, letter.topic, letter.payload) == ("delivery_failed", "eh:hub", b"poison")
    assert "cannot handle this one" in letter.detail
    assert host.stats.failures["flaky"] >= 3
    services.close()


def test_in_the_embedded_default_a_patient_who_texted_stop_gets_no_sms(host) -> None:
    s = host.services
    s.consent.opt_out("+15550100001")  # what an inbound STOP records
    host.publish_device_messages([reading("p1", "blood_pressure", "2026-11-20T07:30:00Z",
                                          {"systolic": 190, "diastolic": 100})])
    host.run_until_idle(timeout_s=60)
    comms = search_all(s.store, "Communication", {"recipient": "Patient/p1"})
    assert comms and {c["status"] for c in comms} == {"not-done"}
    assert all("opted out" in c["statusReason"]["text"] for c in comms)
    assert not any(m["to"] == "+15550100001" for m in s.channels["sms"].provider.messages())
    # The care team is still told (through the escalation fallback: no care team on file here).
    assert any(m["to"] == "care-team" for m in s.channels["outbox"].provider.messages())


def test_a_repeat_alert_in_the_patients_quiet_hours_is_recorded_not_sent(host) -> None:
    """The opening low-SpO2 message reached the patient at 15:00; the repeat firing after the 12 h
    cool-down comes at 03:30, in their quiet hours: the update is recorded as withheld, not sent and
    not silently dropped (the alert sweep re-sends only opening messages)."""
    s = host.services
    host.publish_device_messages([reading("p1", "spo2", "2026-11-20T14:55:00Z", {"percent": 86})])
    assert host.run_until_idle(timeout_s=60)
    to_patient = [c for c in search_all(s.store, "Communication", {"recipient": "Patient/p1"})]
    assert [c["status"] for c in to_patient] == ["completed"]
    s.clock.set(datetime(2026, 11, 21, 3, 30, tzinfo=UTC))
    host.publish_device_messages([reading("p1", "spo2", "2026-11-21T03:25:00Z", {"percent": 86})])
    assert host.run_until_idle(timeout_s=60)
    to_patient = search_all(s.store, "Communication", {"recipient": "Patient/p1"})
    [update] = [c for c in to_patient if c["status"] != "completed"]
    assert update["status"] == "not-done"
    assert update["statusReason"]["coding"][0]["code"] == "quiet-hours"
    patient_files = [m for m in s.channels["outbox"].provider.messages() if m.get("to") == "+15550100001"]
    assert len(patient_files) == 1


def test_a_low_glucose_instruction_is_not_held_for_quiet_hours(host) -> None:
    """A 54 mg/dL reading (ADA level 1: treat it now) at 06:45 in the patient's quiet hours pages
    the nurse AND texts the patient at once; so does the repeat after the cool-down, at 22:30."""
    s = host.services
    s.clock.set(datetime(2026, 11, 20, 6, 46, tzinfo=UTC))
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T06:45:00Z", {"glucose": 54, "unit": "mg/dL"})])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    assert (issue["code"]["coding"][0]["code"], issue["severity"]) == ("dm-hypoglycemia", "moderate")
    assert s.store.read("Task", issue["id"])["priority"] == "asap"
    sent = [m for m in s.channels["outbox"].provider.messages() if m.get("to") == "+15550100001"]
    assert len(sent) == 1  # not held until 08:00
    assert any(m["to"] == "care-team" for m in s.channels["outbox"].provider.messages())
    s.clock.set(datetime(2026, 11, 20, 22, 30, tzinfo=UTC))
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T22:25:00Z", {"glucose": 60, "unit": "mg/dL"})])
    assert host.run_until_idle(timeout_s=60)
    sent = [m for m in s.channels["outbox"].provider.messages() if m.get("to") == "+15550100001"]
    assert len(sent) == 2
    assert not [c for c in search_all(s.store, "Communication", {"recipient": "Patient/p1"})
                if c["status"] == "not-done"]


def test_level_2_hypoglycemia_is_stat_and_shown_as_stat_to_staff(host) -> None:
    s = host.services
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T14:55:00Z", {"glucose": 50, "unit": "mg/dL"})])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    assert issue["severity"] == "high"
    assert s.store.read("Task", issue["id"])["priority"] == "stat"
    assert {"url": "urn:vigil:extension:alert-priority", "valueCode": "stat"} in issue["extension"]
    staff = [m for m in s.channels["outbox"].provider.messages() if m.get("to") == "care-team"]
    assert staff and all("STAT ALERT" in m["body"].upper() for m in staff)


def test_a_repeat_reading_corrected_to_a_worse_severity_reaches_the_patient_again(host) -> None:
    """Low glucose opens a moderate episode (patient texted at 09:00); at 15:30, past the 6 h
    cool-down, a second low reading texts them again; that reading is then corrected to the severe
    range: the severity rise is a message of its own, not taken for the one already sent about the
    same reading."""
    s = host.services
    low = {"glucose": 65, "unit": "mg/dL"}
    s.clock.set(s.clock.now().replace(hour=9, minute=0))
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T08:55:00Z", low)])
    assert host.run_until_idle(timeout_s=60)
    s.clock.set(s.clock.now().replace(hour=15, minute=30))
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T15:25:00Z", low)])
    assert host.run_until_idle(timeout_s=60)
    assert len(search_all(s.store, "Communication", {"recipient": "Patient/p1"})) == 2
    s.clock.set(s.clock.now().replace(hour=15, minute=35))
    host.publish_device_messages([reading("p1", "glucose", "2026-11-20T15:25:00Z", {"glucose": 48, "unit": "mg/dL"})])
    assert host.run_until_idle(timeout_s=60)
    to_patient = search_all(s.store, "Communication", {"recipient": "Patient/p1"})
    assert sorted(c["status"] for c in to_patient) == ["completed", "completed", "completed"]
    [issue] = search_all(s.store, "DetectedIssue", {})
    assert issue["severity"] == "high"


def test_a_careplan_naming_an_unknown_program_is_dead_lettered_and_logged(host, caplog) -> None:
    """A typo in the program id once left the patient silently not enrolled."""
    s = host.services
    s.store.update({"resourceType": "CarePlan", "id": "p1-typo", "status": "active", "intent": "plan",
                    "instantiatesCanonical": ["urn:vigil:program:post-discharg"],
                    "category": [{"coding": [{"system": "urn:vigil:program", "code": "heart-failur"}]}],
                    "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-10-01"}})
    # A CarePlan of another system (not a Vigil program) is not Vigil's to judge.
    s.store.update({"resourceType": "CarePlan", "id": "p1-other", "status": "active", "intent": "plan",
                    "instantiatesCanonical": ["http://example.org/PlanDefinition/wound-care"],
                    "subject": {"reference": "Patient/p1"}})
    with caplog.at_level("WARNING"):
        assert host.run_until_idle(timeout_s=60)
    [letter] = [d for d in s.dead_letters.list() if d.reason == "unknown_program"]
    assert "'post-discharg'" in letter.detail and "'heart-failur'" in letter.detail
    assert "post-discharge" in letter.detail  # the known programs are listed
    assert "CarePlan/p1-typo names 2 unknown program id(s)" in caplog.text
    assert "post-discharg" not in caplog.text
    # Replaying the event changes nothing (one dead letter per payload).
    assert host.run_until_idle(timeout_s=60)
    assert len([d for d in s.dead_letters.list() if d.reason == "unknown_program"]) == 1


def test_readings_of_a_patient_enrolled_only_by_an_unknown_program_say_so(data_dir, caplog) -> None:
    h = make_host(data_dir)
    h.acquire()
    try:
        add_patient(h.services, "p9", programs=())
        h.services.store.update({"resourceType": "CarePlan", "id": "p9-typo", "status": "active", "intent": "plan",
                                 "instantiatesCanonical": ["urn:vigil:program:hypertensoin"],
                                 "subject": {"reference": "Patient/p9"}})
        h.publish_device_messages([reading("p9", "blood_pressure", "2026-11-20T07:30:00-05:00",
                                           {"systolic": 186, "diastolic": 112})])
        with caplog.at_level("WARNING"):
            assert h.run_until_idle(timeout_s=60)
        assert "active CarePlan names 1 unknown program id(s); not enrolled" in caplog.text
        assert [d.reason for d in h.services.dead_letters.list()] == ["unknown_program"]
    finally:
        h.release()
        h.services.close()


def test_the_post_discharge_program_enrolls_by_careplan_and_alerts_on_fever(host) -> None:
    s = host.services
    s.store.update({"resourceType": "CarePlan", "id": "p1-pd", "status": "active", "intent": "plan",
                    "instantiatesCanonical": ["urn:vigil:program:post-discharge"],
                    "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-10-01"}})
    host.publish_device_messages([reading("p1", "body_temp", "2026-11-20T14:50:00Z",
                                          {"temperature": 100.6, "unit": "[degF]"})])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(s.store, "DetectedIssue", {"patient": "Patient/p1"})
    assert (issue["code"]["coding"][0]["code"], issue["severity"]) == ("pd-fever", "moderate")
    assert not [d for d in s.dead_letters.list() if d.reason == "unknown_program"]


def test_a_disabled_timer_is_not_scheduled_but_can_be_run_by_hand(tmp_path, monkeypatch) -> None:
    import time

    from runtime.bootstrap import bootstrap
    from runtime.host import LocalHost
    from runtime.settings import Settings

    monkeypatch.setenv("AzureWebJobs.retention_purge.Disabled", "true")
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path / "d"))
    try:
        host = LocalHost(services)
        timers = {s.name for s in host.of_kind("timerTrigger")}
        assert "retention_purge" not in timers and "alert_sweep" in timers
        assert host.run_due_timers(now=time.time() + 2 * 86400) == len(timers)  # all due but the disabled one
        host.run_timer("retention_purge")
        assert host.stats.invocations.get("retention_purge") == 1
    finally:
        services.close()
