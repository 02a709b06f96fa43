"""Acknowledgements racing the sweeps, and a workflow topic that is down when one is recorded.

Each race runs on the real embedded store: an `InterleavingStore` (a second connection to the same
SQLite file) lets another writer in between a handler's read and its write, the interleaving two
Function instances can hit. What a user would check:
- a clinician acknowledging while the alert sweep closes the episode: the episode stays closed
  (status final, period end kept) and also carries the acknowledgement;
- the severity rising while a clinician acknowledges: the acknowledgement stands (the chain does not
  resume), the ack code is kept, and the priority still rises;
- the workflow topic failing when the acknowledgement is recorded: the clinician is told it worked,
  and their next click publishes the `acknowledged` event (same id and time as the lost one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fhirstore.errors import PreconditionFailed
from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from handlers import alerting
from handlers.acknowledge import acknowledge_by_token, record_acknowledgement
from handlers.fhir_events import EventDeps, evaluate_observation
from handlers.messaging import ACK_PURPOSE, ACK_TTL, Messaging
from notifications.ack_codes import ACK_CODE_SYSTEM
from notifications.escalation import LEVEL_SYSTEM, acknowledged_at, level_of
from notifications.workflow_events import ACKNOWLEDGED, CLOSED, MemoryPublisher, PublishError, WorkflowEvent
from runtime.bootstrap import messaging
from runtime.host import LocalHost
from tests.support.pipeline import add_patient, make_host, reading

NURSE = "Practitioner/nurse-1"
DOCTOR = "Practitioner/doctor-1"


class InterleavingStore(SqliteFhirStore):
    """The real embedded store; right after this writer's first read of `resource_type`, `meanwhile`
    runs (another writer, on its own connection to the same file)."""

    def __init__(self, path: Path, resource_type: str, meanwhile: Callable[[], Any]) -> None:
        super().__init__(path)
        self.resource_type = resource_type
        self.meanwhile: Callable[[], Any] | None = meanwhile

    def read(self, resource_type: str, id: str) -> dict[str, Any]:
        found = super().read(resource_type, id)
        if resource_type == self.resource_type and self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return found


class FailingOncePublisher(MemoryPublisher):
    """A workflow topic that is down for the first publish, then up."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[WorkflowEvent] = []

    def publish(self, events: Sequence[WorkflowEvent]) -> None:
        if not self.lost:
            self.lost.extend(events)
            raise PublishError("Event Grid answered HTTP 503", transient=True)
        super().publish(events)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LocalHost]:
    h = make_host(tmp_path / "data")
    h.acquire()
    s = h.services
    add_patient(s, "p1", programs=("hypertension", "diabetes"))
    for pid in ("nurse-1", "doctor-1"):
        s.store.update(
            {"resourceType": "Practitioner", "id": pid, "telecom": [{"system": "sms", "value": "+15550100201"}]}
        )
    s.store.update({"resourceType": "CareTeam", "id": "team-p1", "status": "active",
                    "subject": {"reference": "Patient/p1"}, "participant": [
                        {"role": [{"coding": [{"code": role}]}], "member": {"reference": who}}
                        for role, who in (("nurse", NURSE), ("physician", DOCTOR))]})
    yield h
    h.release()
    s.close()


def open_alert(host: LocalHost, type_: str, values: dict[str, Any]) -> dict[str, Any]:
    """A reading that opens an episode; returns its escalation Task."""
    host.publish_device_messages([reading("p1", type_, "2026-11-20T14:55:00Z", values)])
    assert host.run_until_idle(timeout_s=60)
    [issue] = search_all(host.services.store, "DetectedIssue", {"patient": "Patient/p1"})
    return host.services.store.read("Task", issue["id"])


def racing(host: LocalHost, resource_type: str, meanwhile: Callable[[], Any]) -> Messaging:
    """Messaging whose store lets `meanwhile` write right after its first read of `resource_type`."""
    store = InterleavingStore(host.services.settings.path("fhir.db"), resource_type, meanwhile)
    return replace(messaging(host.services), store=store, workflow=MemoryPublisher())


def test_an_acknowledgement_racing_the_episode_close_leaves_it_closed_and_adds_the_mitigation(host) -> None:
    s = host.services
    task = open_alert(host, "blood_pressure", {"systolic": 192, "diastolic": 118})
    sweep = replace(messaging(s), workflow=MemoryPublisher())  # the alert sweep, on the host's connection
    m = racing(host, "DetectedIssue", lambda: alerting.close(sweep, s.store.read("DetectedIssue", task["id"]),
                                                               s.clock.now(), "resolved"))

    assert record_acknowledgement(m, task["id"], NURSE).status == "acknowledged"

    issue = s.store.read("DetectedIssue", task["id"])
    assert issue["status"] == "final"
    assert issue["identifiedPeriod"].get("end") is not None
    assert [x["action"]["text"] for x in issue["mitigation"]] == ["resolved", "Alert acknowledged"]
    assert issue["mitigation"][-1]["author"] == {"reference": NURSE}
    assert [e.event_type for e in sweep.workflow.events] == [CLOSED]
    assert [e.event_type for e in m.workflow.events] == [ACKNOWLEDGED]
    m.store.close()


def test_a_priority_raise_racing_an_acknowledgement_keeps_the_acknowledgement_and_the_ack_code(host) -> None:
    s = host.services
    task = open_alert(host, "glucose", {"glucose": 65})  # level 1 hypoglycaemia: an asap Task ("treat it now")
    assert (task["status"], task["priority"]) == ("requested", "asap")
    code = [i["value"] for i in task["identifier"] if i["system"] == ACK_CODE_SYSTEM]
    assert code, "the first staff message gave the Task its ack code"
    # A worse reading (level 2, high) is stored; its evaluation raises the Task's priority while the
    # nurse's acknowledgement lands between that read and write.
    [first] = search_all(s.store, "Observation", {"subject": "Patient/p1"})
    worse = {**first, "id": "glucose-worse", "valueQuantity": {**first["valueQuantity"], "value": 50},
             "effectivePeriod": {"start": "2026-11-20T14:58:00Z", "end": "2026-11-20T14:58:00Z"}}
    for key in ("meta", "identifier", "effectiveDateTime"):
        worse.pop(key, None)
    worse = s.store.update(worse).resource
    m = racing(host, "Task", lambda: record_acknowledgement(messaging(s), task["id"], NURSE))

    # The acknowledgement also wrote its mitigation on the DetectedIssue this evaluation had read, so
    # the episode update is refused in turn and the event is delivered again.
    with pytest.raises(PreconditionFailed):
        evaluate_observation(worse, EventDeps(messaging=m, rulesets=s.rulesets, dead_letters=s.dead_letters))
    after = s.store.read("Task", task["id"])
    assert (after["status"], after["owner"]) == ("accepted", {"reference": NURSE})
    assert after["businessStatus"]["coding"][0]["code"] == "acknowledged"
    assert [i["value"] for i in after["identifier"] if i["system"] == ACK_CODE_SYSTEM] == code
    assert after["priority"] == "stat"  # level 2: the tier's priority

    again = evaluate_observation(worse, EventDeps(messaging=replace(messaging(s), workflow=MemoryPublisher()),
                                                  rulesets=s.rulesets, dead_letters=s.dead_letters))
    assert again.decisions["update"] == 1
    issue = s.store.read("DetectedIssue", task["id"])
    assert issue["severity"] == "high" and issue["mitigation"][-1]["author"] == {"reference": NURSE}
    assert s.store.read("Task", task["id"]) == after  # nothing left to raise: not written again
    m.store.close()


def test_a_workflow_topic_down_does_not_fail_the_acknowledgement_and_the_next_click_publishes(host, caplog) -> None:
    s = host.services
    task = open_alert(host, "blood_pressure", {"systolic": 192, "diastolic": 118})
    topic = FailingOncePublisher()
    m = replace(messaging(s), workflow=topic)
    link = m.tokens.issue(purpose=ACK_PURPOSE, subject=f"Task/{task['id']}", actor=NURSE, ttl=ACK_TTL)

    with caplog.at_level(logging.WARNING):
        first = acknowledge_by_token(m, link)
    assert (first.status, first.message) == (200, "Acknowledged. The escalation has stopped.")
    assert s.store.read("Task", task["id"])["status"] == "accepted"
    assert topic.events == [] and len(topic.lost) == 1
    assert "PublishError" in caplog.text and "503" not in caplog.text  # the exception type only

    # Another clinician's late click publishes nothing: the acknowledgement is not theirs.
    other = m.tokens.issue(purpose=ACK_PURPOSE, subject=f"Task/{task['id']}", actor=DOCTOR, ttl=ACK_TTL)
    assert acknowledge_by_token(m, other).status == 200
    assert topic.events == []

    second = acknowledge_by_token(m, link)  # the nurse clicks again
    assert (second.status, second.message) == (200, "This alert was already acknowledged. Thank you.")
    [event] = topic.events
    assert event == topic.lost[0]  # same id, data and time: subscribers de-duplicate a repeat
    assert event.data["acknowledgedBy"] == NURSE
    assert event.event_time == acknowledged_at(s.store.read("Task", task["id"]))


def test_the_republished_event_says_late_when_the_chain_had_run_out(host) -> None:
    s = host.services
    task = open_alert(host, "blood_pressure", {"systolic": 192, "diastolic": 118})
    exhausted = {**task, "businessStatus": {"coding": [{"system": LEVEL_SYSTEM, "code": "exhausted"}],
                                            "text": "escalation exhausted"}}
    s.store.update(exhausted, if_match=task["meta"]["versionId"])
    topic = FailingOncePublisher()
    m = replace(messaging(s), workflow=topic)

    assert record_acknowledgement(m, task["id"], NURSE).late is True
    assert record_acknowledgement(m, task["id"], NURSE).status == "already"
    [event] = topic.events
    assert event == topic.lost[0]
    assert (event.data["late"], event.data["level"]) == (True, level_of(task))
