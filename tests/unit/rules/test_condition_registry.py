"""A condition kind is one module and one registry line: a kind registered from a test loads through
the normal YAML loader (with line-accurate errors), evaluates on both paths, and leaves no trace."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

import pytest
from pydantic import Field

from rules import registry
from rules.conditions import Scope
from rules.evaluate import evaluate
from rules.fastpath import compiled
from rules.fields import StrictModel
from rules.loader import RuleLoadError, parse_ruleset
from rules.results import ConditionResult
from tests.unit.rules.helpers import at, context, observation

# --- the whole "weekday" kind: model, evaluator, fast-path compiler, needs ----------------------

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WeekdayCond(StrictModel):
    weekday: list[Day] = Field(min_length=1)


def _today(scope: Scope) -> str:
    return DAYS[scope.at.astimezone(scope.ctx.tz).weekday()]


def evaluate_weekday(cond: WeekdayCond, scope: Scope) -> ConditionResult:
    today = _today(scope)
    return ConditionResult("weekday", today in cond.weekday, lambda: f"today is {today}")


def compile_weekday(cond: WeekdayCond) -> Any:
    days = frozenset(cond.weekday)
    return lambda scope: _today(scope) in days


WEEKDAY = registry.ConditionKind("weekday", WeekdayCond, evaluate_weekday, compile_weekday,
                                 needs=lambda cond: registry.Needs())

# -------------------------------------------------------------------------------------------------

YAML = """\
ruleset: weekday-test
title: Weekday test
program: {id: weekday-test, category: [weekday-test]}
rules:
  - id: monday-high
    title: High on a Monday
    severity: moderate
    when:
      all:
        - reading: systolic_bp >= 180
        - weekday: [mon, {days}]
"""


@pytest.fixture
def weekday_kind() -> Iterator[registry.ConditionKind]:
    registry.register(WEEKDAY)
    try:
        yield WEEKDAY
    finally:
        registry.unregister("weekday")


def test_a_registered_kind_loads_and_evaluates(weekday_kind: registry.ConditionKind) -> None:
    ruleset = parse_ruleset(YAML.replace("{days}", "tue"), "weekday.yaml")
    rule = ruleset.rules[0]
    assert rule.trigger_metrics == frozenset({"systolic_bp"})
    assert rule.metrics == frozenset({"systolic_bp"})
    monday = observation(0, systolic_bp=185)  # T0 is Monday 2025-03-10, 12:00 UTC
    wednesday = observation(48, systolic_bp=185)
    assert [f.rule_id for f in evaluate([ruleset], monday, [], context())] == ["monday-high"]
    assert evaluate([ruleset], wednesday, [], context()) == []
    check, _ = compiled(rule)
    scope = Scope(rule, at(0), {r.metric: r for r in monday}, _history(monday), context(), None, explain=False)
    assert check(scope) is True


def test_a_bad_value_of_a_registered_kind_names_its_line(weekday_kind: registry.ConditionKind) -> None:
    with pytest.raises(RuleLoadError) as exc:
        parse_ruleset(YAML.replace("{days}", "funday"), "weekday.yaml")
    [problem] = exc.value.problems
    assert (problem.file, problem.line) == ("weekday.yaml", 11)
    assert problem.field == "rules[0].when.all[1].weekday[1]"
    assert "got 'funday'" in problem.message


def test_the_valid_kinds_list_the_registered_kind(weekday_kind: registry.ConditionKind) -> None:
    with pytest.raises(RuleLoadError) as exc:
        parse_ruleset(YAML.replace("weekday: [mon, {days}]", "wekday: [mon]"), "weekday.yaml")
    assert "one of: reading, count, change, aggregate, consecutive, absence, pro, all, any, not, weekday; " \
        "found keys wekday" in str(exc.value)


def test_an_unregistered_kind_is_unknown_again() -> None:
    assert "weekday" not in registry.names()
    with pytest.raises(RuleLoadError) as exc:
        parse_ruleset(YAML.replace("{days}", "tue"), "weekday.yaml")
    [problem] = exc.value.problems
    assert problem.line == 11 and "found keys weekday" in problem.message
    assert "weekday" not in problem.message.split("one of: ")[1].split(";")[0]


def test_a_kind_name_is_registered_once(weekday_kind: registry.ConditionKind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(WEEKDAY)


def _history(readings: Any) -> Any:
    from rules.window import History

    return History(readings)


# --- a kind that reads history: its `needs` decide the rule's triggers and the handler's window -----

class WeightSeenCond(StrictModel):
    weight_seen: int = Field(ge=1)  # days back


def _weight_needs(cond: WeightSeenCond) -> registry.Needs:
    return registry.Needs(metrics=frozenset({"body_weight"}), lookback=timedelta(days=cond.weight_seen))


def _weight_evaluate(cond: WeightSeenCond, scope: Scope) -> ConditionResult:
    start = scope.at - timedelta(days=cond.weight_seen)
    found = scope.history.series("body_weight").between(start, scope.at)
    return ConditionResult("weight_seen", bool(found), lambda: f"{len(found)} weight reading(s)")


WEIGHT_SEEN = registry.ConditionKind("weight_seen", WeightSeenCond, _weight_evaluate, needs=_weight_needs)

WEIGHT_YAML = """\
ruleset: weight-seen
title: Weight seen
program: {id: weight-seen, category: [weight-seen]}
rules:
  - id: weighed-this-fortnight
    title: Weighed in the last 14 days
    severity: low
    when: {weight_seen: 14}
"""


def test_a_registered_kinds_needs_reach_the_history_window_and_the_fast_path() -> None:
    from handlers.patient_data import history_window

    registry.register(WEIGHT_SEEN)
    try:
        ruleset = parse_ruleset(WEIGHT_YAML, "weight.yaml")
        rule = ruleset.rules[0]
        assert (rule.trigger_metrics, rule.metrics, rule.horizon) == (
            frozenset({"body_weight"}), frozenset({"body_weight"}), timedelta(days=14))
        metrics, since = history_window([ruleset], at(0), frozenset({"body_weight"}))
        assert metrics == frozenset({"body_weight"})
        assert since == at(0) - timedelta(days=15)  # the lookback and the calendar-day margin
        assert history_window([ruleset], at(0), frozenset({"heart_rate"}))[0] == frozenset()
        weighed = observation(-24, body_weight=80)
        scope = Scope(rule, at(0), {}, _history(weighed), context(), None, explain=False)
        check, _ = compiled(rule)  # no compiler: the fast path asks the explaining evaluator
        assert check(scope) is True
        scope = Scope(rule, at(0), {}, _history([]), context(), None, explain=False)
        assert check(scope) is False
    finally:
        registry.unregister("weight_seen")
