"""Alert episodes: the open/update/suppress/close decision and the FHIR resources that record it."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.task import Task

from rules.episode_resources import (
    close_episode,
    close_flag,
    open_episode,
    raise_task_priority,
    update_episode,
)
from rules.episodes import (
    Episode,
    apply_decision,
    decide,
    episode_from_detected_issue,
    episode_key,
    review_open_episode,
)
from rules.evaluate import evaluate, sweep
from rules.results import Firing
from tests.unit.rules.helpers import PATIENT, at, context, observation, one_rule, reading

RULES = one_rule({"reading": "systolic_bp >= 160"},
                 more_severe=[{"severity": "high", "when": {"reading": "systolic_bp >= 180"}}],
                 suppression={"cooldown": "24h", "resolve_after": "72h"},
                 actions={"notify": ["care-team"], "flag": True})
RULE = RULES.rules[0]


def fire(value: float, hours: float, ref: str | None = None) -> Firing:
    [firing] = evaluate([RULES], observation(hours, ref, systolic_bp=value), [], context())
    return firing


def open_state(first: Firing, now_hours: float) -> Episode:
    now = at(now_hours)
    decision = decide(RULE, first, None, now, PATIENT)
    state = apply_decision(decision, first, None, now, PATIENT)
    assert state is not None
    return state


def test_first_firing_opens() -> None:
    firing = fire(165, 0)
    decision = decide(RULE, firing, None, at(0), PATIENT)
    assert (decision.action, decision.notify, decision.severity) == ("open", True, "moderate")
    assert decision.key == episode_key("r1", PATIENT, at(0))


def test_redelivered_event_and_unchanged_update_fire_nothing_new() -> None:
    first = fire(165, 0, "Observation/a")
    episode = open_state(first, 0)
    for again in (fire(165, 0, "Observation/a"), fire(170, 0, "Observation/a")):  # replay; new version, same outcome
        decision = decide(RULE, again, episode, at(0.1), PATIENT)
        assert decision.action == "suppress" and not decision.notify
        assert "already counted" in decision.reason


def test_update_of_the_same_reading_to_a_worse_severity_updates_and_notifies() -> None:
    episode = open_state(fire(165, 0, "Observation/a"), 0)
    decision = decide(RULE, fire(185, 0, "Observation/a"), episode, at(0.1), PATIENT)
    assert (decision.action, decision.notify, decision.severity) == ("update", True, "high")


@pytest.mark.parametrize(
    ("value", "now_hours", "action", "notify"),
    [
        (166, 2, "update", False),  # repeat inside the cool-down: counted, not re-notified
        (166, 25, "update", True),  # cool-down passed: notify again
        (185, 2, "update", True),  # worse severity: notify at once
    ],
)
def test_repeat_firing_within_an_open_episode(value: float, now_hours: float, action: str, notify: bool) -> None:
    episode = open_state(fire(165, 0, "Observation/a"), 0)
    later = fire(value, now_hours, "Observation/b")
    decision = decide(RULE, later, episode, at(now_hours), PATIENT)
    assert (decision.action, decision.notify, decision.key) == (action, notify, episode.key)
    updated = apply_decision(decision, later, episode, at(now_hours), PATIENT)
    assert updated is not None and updated.count == 2 and updated.latest_ref == "Observation/b"
    assert updated.severity == ("high" if value >= 180 else "moderate")


def test_late_reading_updates_count_but_not_latest() -> None:
    episode = open_state(fire(165, 10, "Observation/b"), 10)
    late = fire(170, 5, "Observation/a")
    decision = decide(RULE, late, episode, at(11), PATIENT)
    updated = apply_decision(decision, late, episode, at(11), PATIENT)
    assert decision.action == "update" and updated is not None
    assert (updated.count, updated.latest_ref, updated.last_held) == (2, "Observation/b", at(10))


@pytest.mark.parametrize(
    ("now_hours", "action"),
    [(50, "none"), (72, "close"), (100, "close")],
)
def test_close_after_the_rule_stopped_holding_for_resolve_after(now_hours: float, action: str) -> None:
    episode = open_state(fire(165, 0), 0)
    decision = decide(RULE, None, episode, at(now_hours), PATIENT)
    assert decision.action == action
    if action == "close":
        closed = apply_decision(decision, None, episode, at(now_hours), PATIENT)
        assert closed is not None and not closed.is_open and closed.closed_at == at(now_hours)


def test_after_close_cooldown_suppresses_unless_worse_then_a_new_episode_opens() -> None:
    episode = open_state(fire(165, 0), 0)
    closed = replace(episode, is_open=False, closed_at=at(80))
    assert decide(RULE, fire(165, 90, "Observation/c"), closed, at(90), PATIENT).action == "suppress"
    assert decide(RULE, fire(185, 90, "Observation/c"), closed, at(90), PATIENT).action == "open"
    reopened = decide(RULE, fire(165, 110, "Observation/d"), closed, at(110), PATIENT)
    assert reopened.action == "open" and reopened.key == episode_key("r1", PATIENT, at(110)) != episode.key


def test_readings_from_before_a_closed_episode_ended_do_not_reopen_it() -> None:
    episode = open_state(fire(165, 0, "Observation/a"), 0)
    closed = replace(episode, is_open=False, closed_at=at(80))
    assert decide(RULE, fire(165, 0, "Observation/a"), closed, at(200), PATIENT).action == "suppress"  # replay
    assert decide(RULE, fire(170, 40, "Observation/late"), closed, at(200), PATIENT).action == "suppress"


def test_absence_opens_one_episode_per_gap_not_per_sweep() -> None:
    rules = one_rule({"absence": {"metric": "body_weight", "days": 2}}, suppression={"resolve_after": "1h"})
    rule = rules.rules[0]
    history = [reading("body_weight", 80, -100)]
    episode, opened = None, 0
    for hours in (0, 24, 48, 72):
        [firing] = sweep([rules], history, context(), at(hours))
        decision = decide(rule, firing, episode, at(hours), PATIENT)
        opened += decision.action == "open"
        episode = apply_decision(decision, firing, episode, at(hours), PATIENT)
    assert opened == 1
    history.append(reading("body_weight", 81, 80))  # the gap ends
    assert sweep([rules], history, context(), at(81)) == []
    assert decide(rule, None, episode, at(81), PATIENT).action == "close"


def test_an_absence_episode_resolves_after_the_data_resumed_not_after_it_opened() -> None:
    """Sweeps that find the same gap write nothing, so the episode's last-held time stays at its
    opening; resolve_after (24 h here) must count from when readings came back (80 h)."""
    rules = one_rule({"absence": {"metric": "body_weight", "days": 2}}, suppression={"resolve_after": "24h"})
    rule = rules.rules[0]
    history = [reading("body_weight", 80, -100)]
    [firing] = sweep([rules], history, context(), at(0))
    episode = apply_decision(decide(rule, firing, None, at(0), PATIENT), firing, None, at(0), PATIENT)
    for hours in (24, 48, 72):  # the gap goes on: suppressed, nothing written
        [again] = sweep([rules], history, context(), at(hours))
        assert decide(rule, again, episode, at(hours), PATIENT).action == "suppress"
    history.append(reading("body_weight", 81, 80))  # the gap ends
    for hours, action in ((81, "none"), (103.5, "none"), (104, "close")):
        decision, outcome = review_open_episode("r1", rule, episode, history, context(), at(hours))
        assert (decision.action, outcome) == (action, None), hours


def test_same_gap_after_staff_closed_it_is_not_reopened() -> None:
    rules = one_rule({"absence": {"metric": "body_weight", "days": 2}})
    [firing] = sweep([rules], [reading("body_weight", 80, -100)], context(), at(0))
    state = apply_decision(decide(rules.rules[0], firing, None, at(0), PATIENT), firing, None, at(0), PATIENT)
    assert state is not None
    closed = replace(state, is_open=False, closed_at=at(1))
    [again] = sweep([rules], [reading("body_weight", 80, -100)], context(), at(200))
    assert decide(rules.rules[0], again, closed, at(200), PATIENT).action == "suppress"


def test_resources_validate_and_round_trip() -> None:
    first = fire(165, 0, "Observation/a")
    resources = open_episode(first, PATIENT, at(0))
    issue, task, flag = resources.detected_issue, resources.task, resources.flag
    assert task is not None and flag is not None
    DetectedIssue.model_validate(issue)
    Task.model_validate(task)
    Flag.model_validate(flag)
    key = episode_key("r1", PATIENT, at(0))
    assert issue["id"] == task["id"] == flag["id"] == key
    assert issue["identifier"] == [{"system": "urn:vigil:alert", "value": key}]
    assert (
        task["identifier"][0]["system"] == "urn:vigil:alert-task"
        and flag["identifier"][0]["system"] == "urn:vigil:alert-flag"
    )
    assert task["focus"] == {"reference": f"DetectedIssue/{key}"} and task["for"] == {"reference": PATIENT}
    assert (task["status"], task["intent"], issue["status"], issue["severity"]) == (
        "requested",
        "order",
        "preliminary",
        "moderate",
    )
    assert issue["implicated"] == [{"reference": "Observation/a"}]
    state = episode_from_detected_issue(issue)
    assert state == apply_decision(decide(RULE, first, None, at(0), PATIENT), first, None, at(0), PATIENT)

    worse = fire(185, 3, "Observation/b")
    decision = decide(RULE, worse, state, at(3), PATIENT)
    updated = update_episode(issue, worse, decision, at(3))
    DetectedIssue.model_validate(updated)
    assert episode_from_detected_issue(updated) == apply_decision(decision, worse, state, at(3), PATIENT)
    assert updated["severity"] == "high" and "Fired 2 time(s)" in updated["detail"]
    assert [i["reference"] for i in updated["implicated"]] == ["Observation/a", "Observation/b"]
    assert raise_task_priority(task, RULE, "high")["priority"] == "urgent"

    closed = close_episode(updated, at(90), "Closed: the rule has not held for 72h")
    DetectedIssue.model_validate(closed)
    assert closed["status"] == "final" and closed["identifiedPeriod"]["end"].startswith("2025-03-14")
    assert not episode_from_detected_issue(closed).is_open
    Flag.model_validate(close_flag(flag, at(90)))
    assert close_flag(flag, at(90))["status"] == "inactive"


def test_open_episode_is_deterministic_and_explanation_has_no_identifiers() -> None:
    first = fire(185, 0, "Observation/secret-id-123")
    a = open_episode(first, "Patient/jane-doe-42", at(0))
    b = open_episode(fire(185, 0, "Observation/secret-id-123"), "Patient/jane-doe-42", at(5))
    assert a.detected_issue["id"] == b.detected_issue["id"]
    detail = a.detected_issue["detail"]
    assert (
        "secret-id-123" not in detail and "jane-doe" not in detail and not re.search(r"Patient/|Observation/", detail)
    )
    assert "systolic_bp 185 mm[Hg] >= 160 mm[Hg]" in detail and "Severity raised to high" in detail


def test_low_severity_has_no_task_unless_asked() -> None:
    low = one_rule({"reading": "systolic_bp >= 160"}, severity="low").rules[0]
    [firing] = evaluate([one_rule({"reading": "systolic_bp >= 160"}, severity="low")],
                        observation(0, systolic_bp=170), [], context())
    assert not low.wants_task and open_episode(firing, PATIENT, at(0)).task is None


def test_decide_needs_a_patient_without_an_episode() -> None:
    with pytest.raises(ValueError, match="patient reference"):
        decide(RULE, fire(165, 0), None, at(0))


def test_episode_from_a_foreign_detected_issue_is_refused() -> None:
    with pytest.raises(ValueError, match="not written by the Vigil rules engine"):
        episode_from_detected_issue({"resourceType": "DetectedIssue", "status": "final"})


def test_cooldown_zero_edge() -> None:
    rules = one_rule({"reading": "systolic_bp >= 160"}, suppression={"cooldown": "1m"})
    first = evaluate([rules], observation(0, "Observation/a", systolic_bp=170), [], context())[0]
    state = apply_decision(decide(rules.rules[0], first, None, at(0), PATIENT), first, None, at(0), PATIENT)
    nxt = evaluate([rules], observation(1, "Observation/b", systolic_bp=170), [], context())[0]
    assert decide(rules.rules[0], nxt, state, at(0) + timedelta(minutes=1), PATIENT).notify
