"""Priority above "high": the most dangerous alerts are `stat`, and some patient messages cannot wait."""

from __future__ import annotations

from datetime import UTC, datetime

from rules.enrollment import PatientContext
from rules.episode_resources import PRIORITY_EXT, open_episode
from rules.evaluate import evaluate
from rules.loader import load_rulesets
from rules.readings import Reading
from rules.window import History
from tests.unit.rules.helpers import ruleset

LIBRARY = {r.id: r for rs in load_rulesets("rules/library") for r in rs.rules}


def test_the_most_dangerous_shipped_alerts_are_stat() -> None:
    assert LIBRARY["htn-crisis"].priority_for("high") == "stat"
    assert LIBRARY["pd-bp-crisis"].priority_for("high") == "stat"
    assert LIBRARY["phq9-item9-positive"].priority_for("high") == "stat"
    assert LIBRARY["dm-hypoglycemia"].priority_for("high") == "stat"  # level 2, < 54 mg/dL
    assert LIBRARY["dm-hypoglycemia"].priority_for("moderate") == "asap"  # level 1: treat it now
    assert LIBRARY["hf-weight-gain-day"].priority_for("high") == "urgent"
    assert LIBRARY["htn-low-bp"].priority_for("moderate") == "routine"


def test_a_patient_message_goes_in_quiet_hours_only_when_it_cannot_wait() -> None:
    assert LIBRARY["dm-hypoglycemia"].patient_message_now("moderate")
    assert LIBRARY["copd-spo2-low"].patient_message_now("high")
    assert not LIBRARY["copd-spo2-low"].patient_message_now("moderate")
    assert not LIBRARY["htn-no-readings"].patient_message_now("low")


def test_priority_is_the_highest_of_severity_default_rule_and_tier() -> None:
    rs = ruleset({"id": "r", "when": {"reading": "glucose < 70"}, "actions": {"priority": "routine"},
                  "more_severe": [{"severity": "high", "priority": "asap", "when": {"reading": "glucose < 54"}}]})
    rule = rs.rules[0]
    assert (rule.priority_for("moderate"), rule.priority_for("high")) == ("routine", "asap")
    plain = ruleset(
        {"id": "p", "severity": "high", "when": {"reading": "glucose < 54"}, "actions": {"priority": "routine"}}
    ).rules[0]
    assert plain.priority_for("high") == "urgent"  # a rule cannot ask for less than its severity's default


def test_the_alert_shows_its_priority_on_the_detected_issue() -> None:
    dm = next(rs for rs in load_rulesets("rules/library") if rs.ruleset == "diabetes")
    reading = Reading("glucose", 50.0, datetime(2026, 11, 20, 6, 45, tzinfo=UTC), "Observation/g")
    [firing] = [f for f in evaluate([dm], [reading], History([reading]), PatientContext("Patient/p"))
                if f.rule_id == "dm-hypoglycemia"]
    res = open_episode(firing, "Patient/p", reading.effective)
    assert {"url": PRIORITY_EXT, "valueCode": "stat"} in res.detected_issue["extension"]
    assert res.task is not None and res.task["priority"] == "stat"
    assert res.detected_issue["severity"] == "high"  # FHIR's value set has nothing above high
