"""Quantities and durations as written in rules, and the evaluate/sweep/latest_outcome entry points."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.units import convert_difference
from rules.enrollment import RuleOverride
from rules.evaluate import RuleIndex, evaluate, latest_outcome
from rules.quantity import Quantity, check_unit, format_duration, parse_duration
from tests.unit.rules.helpers import at, context, observation, one_rule, reading, ruleset


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(140, Quantity(140.0)), ("140", Quantity(140.0)), ("2 [lb_av]", Quantity(2.0, "[lb_av]")),
     ("0.9kg", Quantity(0.9, "kg")), ("-2 [lb_av]", Quantity(-2.0, "[lb_av]")), (".5 kg", Quantity(0.5, "kg"))],
)
def test_quantity_parse(raw: object, expected: Quantity) -> None:
    assert Quantity.parse(raw) == expected


@pytest.mark.parametrize("raw", [True, "two pounds", "2 lb av", None, [2]])
def test_quantity_parse_rejects_with_valid_forms(raw: object) -> None:
    with pytest.raises(ValueError, match=r"a number in the metric's unit \(140\) or a number and a UCUM unit"):
        Quantity.parse(raw)


def test_quantity_conversion_value_and_difference() -> None:
    assert Quantity(2, "[lb_av]").in_unit("kg") == pytest.approx(0.90718474)
    assert Quantity(100.4, "[degF]").in_unit("Cel") == pytest.approx(38.0)
    assert Quantity(1.8, "[degF]").in_unit("Cel", difference=True) == pytest.approx(1.0)
    assert convert_difference(2, "[lb_av]", "kg") == pytest.approx(0.90718474)
    assert Quantity(140).in_unit("mm[Hg]") == 140


def test_check_unit_lists_valid_units() -> None:
    check_unit(Quantity(2, "[lb_av]"), "body_weight")
    with pytest.raises(ValueError, match=r"unit 'kg' cannot be compared with spo2 \(measured in %\); use one of %"):
        check_unit(Quantity(2, "kg"), "spo2")
    with pytest.raises(ValueError, match="UCUM codes are case-sensitive"):
        check_unit(Quantity(2, "KG"), "body_weight")


@pytest.mark.parametrize(("raw", "hours"), [("90m", 1.5), ("24h", 24), ("3d", 72), ("2w", 336), ("45min", 0.75)])
def test_durations(raw: str, hours: float) -> None:
    assert parse_duration(raw) == timedelta(hours=hours)


@pytest.mark.parametrize("raw", ["0h", "1.5h", "2 days", "PT24H", 24])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError, match="expected a whole number and one of m, h, d, w"):
        parse_duration(raw)


def test_format_duration() -> None:
    assert [format_duration(timedelta(hours=h)) for h in (24, 168, 5, 0.5)] == ["1d", "7d", "5h", "30m"]


def test_trigger_must_be_one_observation() -> None:
    rs = one_rule({"reading": "systolic_bp >= 100"})
    with pytest.raises(ValueError, match="one Observation"):
        evaluate(
            [rs],
            [reading("systolic_bp", 150, 0, "Observation/a"), reading("diastolic_bp", 90, 0, "Observation/b")],
            [],
            context(),
        )
    assert evaluate([rs], [], [], context()) == []


def test_only_rules_triggered_by_the_metric_run_and_explicit_triggers_work() -> None:
    rs = ruleset({"id": "bp", "when": {"reading": "systolic_bp >= 100"}},
                 {"id": "weight-on-bp", "triggers": ["systolic_bp"],
                  "when": {"aggregate": {"metric": "body_weight", "stat": "max", "op": ">=", "value": 90, "days": 3}}})
    index = RuleIndex([rs])
    assert [e.rule.id for e in index.for_metrics({"body_weight"})] == []
    firings = evaluate(index, observation(0, systolic_bp=150), [reading("body_weight", 95, -5)], context())
    assert [f.rule_id for f in firings] == ["bp", "weight-on-bp"]


def test_disabled_rules_and_per_patient_disable() -> None:
    rs = ruleset({"id": "on", "when": {"reading": "systolic_bp >= 100"}},
                 {"id": "off", "enabled": False, "when": {"reading": "systolic_bp >= 100"}})
    trigger = observation(0, systolic_bp=150)
    assert [f.rule_id for f in evaluate([rs], trigger, [], context())] == ["on"]
    assert [f.rule_id for f in evaluate([rs], trigger, [], context(), include_disabled=True)] == ["on", "off"]
    ctx = context(overrides={"on": RuleOverride(disabled=True)})
    assert evaluate([rs], trigger, [], ctx) == []


def test_override_in_an_unusable_unit_falls_back_with_a_note() -> None:
    rs = one_rule({"reading": {"metric": "systolic_bp", "op": ">=", "value": {"param": "limit"}}},
                  params={"limit": 160})
    ctx = context(overrides={"r1": RuleOverride(params={"limit": Quantity(3, "kg")})})
    [firing] = evaluate([rs], observation(0, systolic_bp=165), [], ctx)
    assert "(rule value 160)" in firing.explanation()
    assert "Per-patient override of limit ignored" in firing.explanation()


def test_latest_outcome_reevaluates_the_newest_reading_only() -> None:
    rs = one_rule({"reading": "systolic_bp >= 160"})
    high = [reading("systolic_bp", 170, 0)]
    assert latest_outcome("test", rs.rules[0], high, context(), at(100)) is not None  # nothing newer: still holds
    normal = [*high, reading("systolic_bp", 120, 5)]
    assert latest_outcome("test", rs.rules[0], normal, context(), at(100)) is None
    assert latest_outcome("test", rs.rules[0], [], context(), at(100)) is None


def test_data_needed_lists_metrics_and_the_longest_window() -> None:
    from rules.evaluate import data_needed
    from rules.loader import load_rulesets

    metrics, lookback = data_needed([rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"])
    assert metrics == {"body_weight", "heart_rate"}
    assert lookback == timedelta(days=8)  # days: 7 is today plus 7 calendar days
