"""The pure escalation state machine over Task dicts (chains from YAML)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.task import Task

from fhirstore.sqlite import SqliteFhirStore
from notifications.escalation import acknowledge, add_mitigation, advance, due_of, is_due, level_of
from notifications.escalation_chains import EscalationError

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def new_task(tid: str = "t1") -> dict:
    return {"resourceType": "Task", "id": tid, "status": "requested", "intent": "order",
            "focus": {"reference": "DetectedIssue/di1"}, "for": {"reference": "Patient/p1"},
            "authoredOn": "2026-11-20T12:00:00Z"}



def test_full_chain_without_acknowledgement(chains) -> None:
    crisis = chains["crisis"]
    step = advance(new_task(), crisis, T0)
    assert (step.action, step.level, step.roles, step.channels, step.due) == (
        "notify", 1, ("nurse",), ("sms", "email"), T0 + timedelta(minutes=15))
    assert step.notify_key == "t1|escalation|level-1|r0" and step.template == "escalation"
    task = step.task
    assert level_of(task) == 1 and task["businessStatus"]["coding"][0]["code"] == "level-1"
    Task.model_validate(task)

    waiting = advance(task, crisis, T0 + timedelta(minutes=14))
    assert (waiting.action, waiting.due, waiting.changed) == ("wait", T0 + timedelta(minutes=15), False)

    # The sweep runs late: the next wait counts from the real notification time.
    step = advance(task, crisis, T0 + timedelta(minutes=17))
    assert (step.action, step.level, step.roles, step.due) == ("notify", 2, ("physician",), T0 + timedelta(minutes=32))
    step = advance(step.task, crisis, T0 + timedelta(minutes=32))
    assert (step.action, step.level, step.roles) == ("notify", 3, ("on-call",))
    repeat = advance(step.task, crisis, T0 + timedelta(minutes=62))
    assert (repeat.action, repeat.level, repeat.notify_key) == ("notify", 3, "t1|escalation|level-3|r1")
    done = advance(repeat.task, crisis, T0 + timedelta(minutes=92))
    assert (done.action, done.roles, done.notify_key) == ("exhausted", ("care-manager",), "t1|escalation|level-4|r0")
    assert done.task["businessStatus"]["coding"][0]["code"] == "exhausted" and due_of(done.task) is None
    assert done.task["status"] == "requested"  # still open: a late acknowledgement is still welcome
    Task.model_validate(done.task)
    assert advance(done.task, crisis, T0 + timedelta(days=1)).action == "done"
    assert not is_due(done.task, T0 + timedelta(days=1))


def test_replaying_a_step_gives_the_same_step(chains) -> None:
    crisis = chains["crisis"]
    task = advance(new_task(), crisis, T0).task
    a = advance(task, crisis, T0 + timedelta(minutes=20))
    b = advance(task, crisis, T0 + timedelta(minutes=20))
    assert a == b and a.notify_key == "t1|escalation|level-2|r0"
    original = new_task()
    advance(original, crisis, T0)
    assert original == new_task()


def test_acknowledgement_stops_the_chain_and_a_second_one_is_harmless(chains) -> None:
    crisis = chains["crisis"]
    task = advance(advance(new_task(), crisis, T0).task, crisis, T0 + timedelta(minutes=15)).task  # level 2
    when = T0 + timedelta(minutes=20)
    ack = acknowledge(task, "Practitioner/d1", when)
    assert ack.changed and not ack.late
    assert ack.task["status"] == "accepted" and ack.task["owner"] == {"reference": "Practitioner/d1"}
    assert ack.task["businessStatus"]["text"] == "acknowledged at level 2" and due_of(ack.task) is None
    assert ack.mitigation == {
        "action": {"coding": [{"system": "urn:vigil:mitigation", "code": "acknowledged",
                               "display": "Alert acknowledged by clinician"}], "text": "Alert acknowledged"},
        "date": "2026-11-20T12:20:00.000Z", "author": {"reference": "Practitioner/d1"}}
    Task.model_validate(ack.task)
    assert advance(ack.task, crisis, T0 + timedelta(hours=2)).action == "done"

    second = acknowledge(ack.task, "Practitioner/n1", when + timedelta(minutes=1))
    assert (second.changed, second.mitigation, second.previous_owner) == (False, None, "Practitioner/d1")
    assert second.task == ack.task


def test_late_acknowledgement_after_exhaustion_is_recorded(chains) -> None:
    simple = chains["simple"]
    task = advance(new_task(), simple, T0).task
    exhausted = advance(task, simple, T0 + timedelta(hours=1))
    assert exhausted.action == "exhausted" and exhausted.roles == ()
    late = acknowledge(exhausted.task, "Practitioner/n1", T0 + timedelta(hours=3))
    assert late.changed and late.late and late.task["status"] == "accepted"


def test_a_task_cancelled_by_staff_stops_the_chain(chains) -> None:
    # Closing an episode leaves its Task escalating (handlers.alerting.close); staff who cancel the
    # Task in the FHIR store end the chain: it is no longer open.
    task = advance(new_task(), chains["crisis"], T0).task
    cancelled = {**task, "status": "cancelled", "statusReason": {"text": "reading back in range"}}
    assert advance(cancelled, chains["crisis"], T0 + timedelta(hours=1)).action == "done"
    assert acknowledge(cancelled, "Practitioner/n1", T0 + timedelta(hours=1)).changed is False


def test_mitigation_is_added_once_and_the_detected_issue_stays_valid(chains) -> None:
    issue = {"resourceType": "DetectedIssue", "id": "di1", "status": "final", "patient": {"reference": "Patient/p1"}}
    entry = acknowledge(advance(new_task(), chains["crisis"], T0).task, "Practitioner/n1", T0).mitigation
    updated, changed = add_mitigation(issue, entry)
    again, changed_again = add_mitigation(updated, entry)
    assert changed and not changed_again and len(again["mitigation"]) == 1
    DetectedIssue.model_validate(updated)


def test_bad_inputs(chains) -> None:
    task = advance(new_task(), chains["crisis"], T0).task
    with pytest.raises(EscalationError, match="runs chain 'crisis'"):
        advance(task, chains["simple"], T0)
    with pytest.raises(EscalationError, match="Practitioner"):
        acknowledge(task, "Jane Doe", T0)
    with pytest.raises(EscalationError, match="timezone-aware"):
        advance(task, chains["crisis"], datetime(2026, 11, 20, 12))


def test_state_round_trips_through_the_fhir_store(tmp_path: Path, clock, chains) -> None:
    store = SqliteFhirStore(tmp_path / "fhir.db", clock=clock)
    store.update(new_task("t9"))
    task = store.read("Task", "t9")
    for minutes in (0, 15, 30, 60, 90):
        step = advance(task, chains["crisis"], T0 + timedelta(minutes=minutes))
        if step.changed:
            store.update(step.task, if_match=task["meta"]["versionId"])
        task = store.read("Task", "t9")
    assert task["businessStatus"]["coding"][0]["code"] == "exhausted"
    found = store.search("Task", {"business-status": "urn:vigil:escalation-level|exhausted"}).resources
    assert [t["id"] for t in found] == ["t9"]
    store.close()
