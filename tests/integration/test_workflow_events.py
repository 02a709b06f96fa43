"""Workflow events through the real `azure-eventgrid` publisher to the local HTTPS topic stand-in."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from notifications import workflow_events as wf
from tests.support.acs_server import FakeAcsServer

AT = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def topic():
    with FakeAcsServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(topic):
    topic.clear_failures()
    topic.state.events.clear()


def publisher(topic: FakeAcsServer, key: str | None = None) -> wf.EventGridWorkflowPublisher:
    return wf.EventGridWorkflowPublisher(topic.eventgrid_endpoint, key or topic.eventgrid_key,
                                         connection_verify=topic.ca_path, retry_total=0)


def lifecycle() -> list[wf.WorkflowEvent]:
    ids = {"detected_issue": "DetectedIssue/di1", "patient": "Patient/p1"}
    return [
        wf.episode_opened(**ids, task="Task/t1", rule_id="htn-crisis", severity="high", at=AT),
        wf.escalated(**ids, task="Task/t1", level=2, roles=["physician"], at=AT),
        wf.acknowledged(**ids, task="Task/t1", by="Practitioner/n1", level=2, at=AT),
        wf.closed(**ids, task="Task/t1", reason="acknowledged", at=AT),
        wf.message_failed(communication="Communication/c1", patient="Patient/p1", about="DetectedIssue/di1",
                          channel="sms", reason_code="opted-out", at=AT),
    ]


def test_lifecycle_events_arrive_in_event_grid_schema_with_the_topic_key(topic) -> None:
    events = lifecycle()
    publisher(topic).publish(events)
    [request] = [r for r in topic.requests if r.path == "/api/events"][-1:]
    assert request.headers["aeg-sas-key"] == topic.eventgrid_key and request.query["api-version"] == ["2018-01-01"]
    received = topic.events
    assert [e["eventType"] for e in received] == [
        "Vigil.Alert.EpisodeOpened", "Vigil.Alert.Escalated", "Vigil.Alert.Acknowledged", "Vigil.Alert.Closed",
        "Vigil.Message.Failed"]
    opened = received[0]
    assert opened["subject"] == "DetectedIssue/di1" and opened["dataVersion"] == "1.0"
    assert opened["id"] == events[0].id and opened["eventTime"].startswith("2026-11-20T12:30:00")
    assert opened["data"] == {"detectedIssue": "DetectedIssue/di1", "patient": "Patient/p1", "task": "Task/t1",
                              "ruleId": "htn-crisis", "severity": "high"}
    assert received[4]["subject"] == "Communication/c1"
    assert received[2]["data"]["acknowledgedBy"] == "Practitioner/n1"


def test_replayed_step_has_the_same_event_id(topic) -> None:
    first = wf.escalated(detected_issue="DetectedIssue/di2", patient="Patient/p2", task="Task/t2", level=1,
                         roles=["nurse"], at=AT)
    again = wf.escalated(detected_issue="DetectedIssue/di2", patient="Patient/p2", task="Task/t2", level=1,
                         roles=["nurse"], at=datetime(2026, 11, 20, 12, 31, tzinfo=UTC))
    next_level = wf.escalated(detected_issue="DetectedIssue/di2", patient="Patient/p2", task="Task/t2", level=2,
                              roles=["physician"], at=AT)
    assert first.id == again.id != next_level.id


def test_wrong_key_is_a_permanent_failure_without_the_key_in_it(topic, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bad_key = "this-is-not-the-topic-key-1234567890"
    with pytest.raises(wf.PublishError) as err:
        publisher(topic, bad_key).publish(lifecycle()[:1])
    assert err.value.transient is False and "401" in str(err.value)
    assert bad_key not in str(err.value) and bad_key not in caplog.text and topic.eventgrid_key not in caplog.text
    assert bad_key not in repr(publisher(topic, bad_key))
    assert topic.events == []


def test_throttling_and_server_errors_are_transient(topic) -> None:
    topic.fail_next("/api/events", 429, headers={"Retry-After": "4"})
    with pytest.raises(wf.PublishError) as err:
        publisher(topic).publish(lifecycle()[:1])
    assert err.value.transient and err.value.retry_after_s == 4.0
    topic.fail_next("/api/events", 503)
    with pytest.raises(wf.PublishError) as err:
        publisher(topic).publish(lifecycle()[:1])
    assert err.value.transient
    publisher(topic).publish(lifecycle()[:1])
    assert len(topic.events) == 1


@pytest.mark.parametrize("data,field", [
    ({"detectedIssue": "DetectedIssue/x", "patient": "Jane Doe", "ruleId": "r", "severity": "high"}, "patient"),
    ({"detectedIssue": "DetectedIssue/x", "patient": "Patient/p", "ruleId": "BP 192/124", "severity": "high"},
     "ruleId"),
    ({"detectedIssue": "DetectedIssue/x", "patient": "Patient/p", "ruleId": "r", "severity": "high",
      "note": "systolic 192"}, "note"),
])
def test_phi_cannot_be_put_into_event_data(data, field) -> None:
    with pytest.raises(wf.WorkflowEventError) as err:
        wf.make_event(wf.EPISODE_OPENED, data, AT)
    assert field in str(err.value)
    assert "Jane" not in str(err.value) and "192" not in str(err.value)


def test_local_publisher_hands_event_grid_json_to_the_bus() -> None:
    sent: list[tuple[bytes, str]] = []
    wf.CallablePublisher(lambda body, eid: sent.append((body, eid))).publish(lifecycle()[:2])
    assert [json.loads(b)["eventType"] for b, _ in sent] == ["Vigil.Alert.EpisodeOpened", "Vigil.Alert.Escalated"]
    assert sent[0][1] == json.loads(sent[0][0])["id"]
