"""Table-driven tests of every condition kind, as of the triggering reading's effective time."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.conditions import Scope, evaluate_condition
from rules.enrollment import RuleOverride
from rules.evaluate import evaluate, sweep
from rules.fastpath import compiled
from rules.loader import load_rulesets
from rules.quantity import Quantity
from rules.readings import Reading
from rules.window import History
from tests.unit.rules.helpers import at, context, goal, observation, one_rule, reading

SBP, WEIGHT, SPO2 = "8480-6", "29463-7", "2708-6"


@dataclass
class Case:
    name: str
    when: Any
    trigger: dict[str, float]
    fires: bool
    history: list[tuple[str, float, float]] = field(default_factory=list)  # (metric, value, hours)
    hours: float = 0.0  # trigger time
    ctx: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    later: bool = True  # also evaluate as of readings newer than the trigger (it arrived late)


def R(comparison: str) -> dict[str, str]:
    """A reading condition in its compact form."""
    return {"reading": comparison}


def wt(*points: tuple[float, float]) -> list[tuple[str, float, float]]:
    return [("body_weight", v, h) for h, v in points]


def sbp(*points: tuple[float, float]) -> list[tuple[str, float, float]]:
    return [("systolic_bp", v, h) for h, v in points]


CASES = [
    # threshold on the triggering reading; >= versus > is the rule's choice
    Case("reading >= holds at the bound", R("systolic_bp >= 180"), {"systolic_bp": 180}, True,
         text="systolic_bp 180 mm[Hg] >= 180 mm[Hg] (rule value 180)"),
    Case("reading > does not hold at the bound", R("systolic_bp > 180"), {"systolic_bp": 180}, False),
    Case("reading < below", R("spo2 < 88"), {"spo2": 87}, True),
    Case("reading == and !=", {"all": [R("phq9_item9 == 0"), R("phq9_total != 3")]},
         {"phq9_item9": 0, "phq9_total": 4}, True),
    Case("trigger without the metric never holds", R("systolic_bp >= 100"), {"diastolic_bp": 150}, False),
    # quantities with units in thresholds are compared in the canonical unit
    Case("200 lb threshold, 91 kg reading (200.6 lb)", R("body_weight > 200 [lb_av]"), {"body_weight": 91.0}, True,
         text="(rule value 200 [lb_av])"),
    Case("200 lb threshold, 90.5 kg reading (199.5 lb)", R("body_weight > 200 [lb_av]"), {"body_weight": 90.5}, False),
    Case("100.4 degF is 38.0 Cel exactly", R("body_temp >= 100.4 [degF]"), {"body_temp": 38.0}, True),
    Case("37.9 Cel is under 100.4 degF", R("body_temp >= 100.4 [degF]"), {"body_temp": 37.9}, False),
    Case("3.9 mmol/L threshold on mg/dL readings", R("glucose < 3.9 mmol/L"), {"glucose": 70}, True),
    # individualized bounds: goal, default, override
    Case("no goal: the default is used and named", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"goal": "systolic_bp", "bound": "high", "default": 140}}}, {"systolic_bp": 141}, True,
         text="default 140, no usable active goal"),
    Case("goal range high 150 allows 145", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"goal": "systolic_bp", "bound": "high", "default": 140}}}, {"systolic_bp": 145}, False,
         ctx={"goals": (goal(SBP, high=(150, "mm[Hg]")),)}),
    Case("goal range high 150 is exceeded by 151", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"goal": "systolic_bp", "bound": "high", "default": 140}}}, {"systolic_bp": 151}, True,
         ctx={"goals": (goal(SBP, high=(150, "mm[Hg]")),)}, text="active goal range high 150"),
    Case("strict goal < 130: 130 itself is outside the goal", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"goal": "systolic_bp", "bound": "high", "default": 140}}}, {"systolic_bp": 130}, True,
         ctx={"goals": (goal(SBP, high=(130, "mm[Hg]"), comparator="<"),)}),
    Case("inclusive range high 129 with >=: 129 is inside the goal", {"reading": {"metric": "systolic_bp",
         "op": ">=", "value": {"goal": "systolic_bp", "bound": "high", "default": 130}}}, {"systolic_bp": 129}, False,
         ctx={"goals": (goal(SBP, high=(129, "mm[Hg]")),)}),
    Case("a completed goal is ignored: default applies", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"goal": "systolic_bp", "bound": "high", "default": 140}}}, {"systolic_bp": 145}, True,
         ctx={"goals": (goal(SBP, high=(150, "mm[Hg]"), status="completed"),)}, text="default 140"),
    Case("goal in pounds bounds kg readings", {"reading": {"metric": "body_weight", "op": ">",
         "value": {"goal": "body_weight", "bound": "high", "default": 100}}}, {"body_weight": 80.0}, True,
         ctx={"goals": (goal(WEIGHT, high=(175, "[lb_av]")),)}),  # 175 lb = 79.38 kg
    Case("low bound from an SpO2 goal", {"reading": {"metric": "spo2", "op": "<",
         "value": {"goal": "spo2", "bound": "low", "default": 88}}}, {"spo2": 89}, True,
         ctx={"goals": (goal(SPO2, low=(90, "%"), high=(94, "%")),)}),
    Case("per-patient override beats the goal", {"reading": {"metric": "systolic_bp", "op": ">",
         "value": {"param": "limit"}}}, {"systolic_bp": 155}, False,
         rule={"params": {"limit": {"goal": "systolic_bp", "bound": "high", "default": 140}}},
         ctx={"goals": (goal(SBP, high=(150, "mm[Hg]")),),
              "overrides": {"r1": RuleOverride(params={"limit": Quantity(160, "mm[Hg]")})}}),
    # count of matching readings in a window (effective time; later readings invisible)
    Case("count: 3 of the last 7 days", {"count": {"where": "systolic_bp >= 160", "at_least": 3, "within": "7d"}},
         {"systolic_bp": 165}, True, history=sbp((-24, 161), (-48, 170), (-72, 150)), text="3 of 4"),
    Case("count: a reading 8 days old is outside the window",
         {"count": {"where": "systolic_bp >= 160", "at_least": 3, "within": "7d"}},
         {"systolic_bp": 165}, False, history=sbp((-24, 161), (-192, 170))),
    Case("count: readings after the trigger do not count (late reading judged at its own time)",
         {"count": {"where": "systolic_bp >= 160", "at_least": 3, "within": "7d"}},
         {"systolic_bp": 165}, False, history=sbp((-24, 161), (5, 170), (6, 171)), later=False),
    # change over a window
    Case("change first to last, 2 lb in kg", {"change": {"metric": "body_weight", "op": ">=",
         "value": "2 [lb_av]", "within": "26h"}}, {"body_weight": 81.0}, True, history=wt((-24, 80.0)),
         text="1 kg (80 kg to 81 kg) >= 0.91 kg"),
    Case("change 1.9 lb is not 2 lb", {"change": {"metric": "body_weight", "op": ">=", "value": "2 [lb_av]",
         "within": "26h"}}, {"body_weight": 80.86}, False, history=wt((-24, 80.0))),
    Case("change needs two readings", {"change": {"metric": "body_weight", "op": ">=", "value": 1, "within": "26h"}},
         {"body_weight": 90}, False),
    Case("max_rise finds the low point, not the first", {"change": {"metric": "body_weight", "how": "max_rise",
         "op": ">=", "value": 2, "within": "72h"}}, {"body_weight": 80.5}, True,
         history=wt((-70, 80.0), (-40, 78.4)), text="largest rise"),
    Case("first_to_last ignores the dip", {"change": {"metric": "body_weight", "op": ">=", "value": 2,
         "within": "72h"}}, {"body_weight": 80.5}, False, history=wt((-70, 80.0), (-40, 78.4))),
    Case("max_fall (loss reported as a positive amount)", {"change": {"metric": "body_weight", "how": "max_fall",
         "op": ">=", "value": "2 [lb_av]", "days": 2}}, {"body_weight": 79.0}, True, history=wt((-24, 80.0))),
    Case("temperature rise of 1.8 degF is 1 Cel (no offset in a difference)", {"change": {"metric": "body_temp",
         "op": ">=", "value": "1.8 [degF]", "within": "12h"}}, {"body_temp": 38.0},
         True, history=[("body_temp", 37.0, -6)]),
    Case("reading exactly at the window start is inside", {"change": {"metric": "body_weight", "op": ">=",
         "value": 1, "within": "24h"}}, {"body_weight": 81.0}, True, history=wt((-24, 80.0))),
    # mean / min / max over a window
    Case("mean over 7 days", {"aggregate": {"metric": "systolic_bp", "stat": "mean", "op": ">=", "value": 135,
         "within": "7d"}}, {"systolic_bp": 140}, True, history=sbp((-24, 130), (-48, 135)), text="mean of 3"),
    Case("mean needs min_readings", {"aggregate": {"metric": "systolic_bp", "stat": "mean", "op": ">=",
         "value": 100, "within": "7d", "min_readings": 4}}, {"systolic_bp": 140}, False, history=sbp((-24, 130))),
    Case("min over a day", {"aggregate": {"metric": "spo2", "stat": "min", "op": "<", "value": 90, "within": "24h"}},
         {"spo2": 95}, True, history=[("spo2", 89, -3)]),
    Case("max over a day", {"aggregate": {"metric": "systolic_bp", "stat": "max", "op": ">=", "value": 180,
         "days": 0}}, {"systolic_bp": 120}, True, history=sbp((-2, 181))),
    # N consecutive readings
    Case("3 consecutive low SpO2", {"consecutive": {"where": "spo2 < 92", "count": 3, "within": "12h"}},
         {"spo2": 90}, True, history=[("spo2", 91, -1), ("spo2", 89, -2), ("spo2", 97, -3)]),
    Case("a normal reading breaks the run", {"consecutive": {"where": "spo2 < 92", "count": 3, "within": "12h"}},
         {"spo2": 90}, False, history=[("spo2", 97, -1), ("spo2", 89, -2), ("spo2", 88, -3)]),
    Case("consecutive readings must fall in the window", {"consecutive": {"where": "spo2 < 92", "count": 3,
         "within": "12h"}}, {"spo2": 90}, False, history=[("spo2", 91, -1), ("spo2", 89, -13)]),
    # PRO total, band and item
    Case("PHQ-9 item 9 above zero", {"pro": {"instrument": "phq9", "item": 9, "op": ">=", "value": 1}},
         {"phq9_item9": 1, "phq9_total": 3}, True, text="PHQ-9 item 9 1 >= 1"),
    Case("PHQ-9 band at least moderate at 10", {"pro": {"instrument": "phq9", "band_at_least": "moderate"}},
         {"phq9_total": 10}, True, text="band moderate"),
    Case("PHQ-9 9 is mild", {"pro": {"instrument": "phq9", "band_at_least": "moderate"}}, {"phq9_total": 9}, False),
    Case("PHQ-9 total absent (incomplete response)", {"pro": {"instrument": "phq9", "op": ">=", "value": 0}},
         {"phq9_item9": 0}, False),
    # all / any / not
    Case("all holds only if every child holds", {"all": [R("systolic_bp >= 140"), R("diastolic_bp >= 90")]},
         {"systolic_bp": 150, "diastolic_bp": 85}, False),
    Case("any holds if one child holds", {"any": [R("systolic_bp >= 180"), R("diastolic_bp >= 120")]},
         {"systolic_bp": 150, "diastolic_bp": 121}, True, text="diastolic_bp 121"),
    Case("not inverts", {"all": [R("systolic_bp >= 140"), {"not": R("diastolic_bp >= 90")}]},
         {"systolic_bp": 150, "diastolic_bp": 85}, True),
]
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_condition(case: Case) -> None:
    ruleset = one_rule(case.when, **case.rule)
    trigger = observation(case.hours, **case.trigger)
    history = [reading(m, v, h) for m, v, h in case.history]
    firings = evaluate([ruleset], trigger, history, context(**case.ctx), include_later=case.later)
    assert bool(firings) is case.fires, [f.explanation() for f in firings]
    if case.fires and case.text:
        assert case.text in firings[0].explanation()


def test_history_order_does_not_matter() -> None:
    ruleset = one_rule({"count": {"where": "systolic_bp >= 160", "at_least": 3, "within": "7d"}})
    history = [reading("systolic_bp", 161 + i, -24 * i) for i in range(1, 4)]
    forward = evaluate([ruleset], observation(0, systolic_bp=165), history, context())
    backward = evaluate([ruleset], observation(0, systolic_bp=165), list(reversed(history)), context())
    assert [f.implicated_refs for f in forward] == [f.implicated_refs for f in backward] != []


def test_late_reading_completes_a_pattern_at_the_later_reading() -> None:
    """h0 and h8 arrived first (2 high readings in 24 h: no alert); the late h4 reading makes 3."""
    ruleset = one_rule({"count": {"where": "systolic_bp >= 160", "at_least": 3, "within": "24h"}})
    arrived = [reading("systolic_bp", 165, 0, "Observation/a"), reading("systolic_bp", 166, 8, "Observation/c")]
    late = reading("systolic_bp", 167, 4, "Observation/b")
    assert evaluate([ruleset], [arrived[1]], arrived, context()) == []
    firings = evaluate([ruleset], [late], arrived, context())
    assert len(firings) == 1
    firing = firings[0]
    assert firing.late and firing.at == at(8) and firing.trigger_refs == ("Observation/c",)
    assert set(firing.implicated_refs) == {"Observation/a", "Observation/b", "Observation/c"}
    assert "arrived late" in firing.explanation()


def test_late_reading_on_its_own_time_ignores_newer_readings() -> None:
    ruleset = one_rule({"change": {"metric": "body_weight", "op": ">=", "value": 2, "within": "48h"}})
    history = [reading("body_weight", 80, -30), reading("body_weight", 75, 10)]
    firings = evaluate([ruleset], [reading("body_weight", 82.5, 0)], history, context(), include_later=False)
    assert len(firings) == 1 and "80 kg to 82.5 kg" in firings[0].explanation()


def test_calendar_days_use_the_patient_time_zone() -> None:
    """`days: 1` from 10 March 20:00 in New York starts at local midnight of 9 March (EST, the DST
    switch day), 05:00 UTC. A reading at 00:30 New York time on 9 March is inside; for a patient in
    UTC the window starts at 10 March 00:00 UTC and the same instant is outside."""
    ny = ZoneInfo("America/New_York")
    ruleset = one_rule({"change": {"metric": "body_weight", "op": ">=", "value": 1, "days": 1}})
    trigger = [Reading("body_weight", 81.0, datetime(2025, 3, 10, 20, 0, tzinfo=ny).astimezone(UTC), "Observation/t")]
    early = Reading("body_weight", 79.9, datetime(2025, 3, 9, 0, 30, tzinfo=ny).astimezone(UTC), "Observation/e")
    day_before = Reading("body_weight", 79.0, datetime(2025, 3, 8, 23, 30, tzinfo=ny).astimezone(UTC), "Observation/d")
    assert evaluate([ruleset], trigger, [early], context(tz=ny))
    assert evaluate([ruleset], trigger, [early], context(tz=UTC)) == []
    assert evaluate([ruleset], trigger, [day_before], context(tz=ny)) == []


@pytest.mark.parametrize(
    ("name", "history_hours", "now_hours", "ctx", "fires"),
    [
        ("no reading for 48 h", [-60], 0, {}, True),
        ("a reading inside the window", [-10], 0, {}, False),
        ("never a reading, enrolled long ago", [], 0, {"enrolled_since": at(-500)}, True),
        ("never a reading, enrolled yesterday", [], 0, {"enrolled_since": at(-24)}, False),
    ],
)
def test_absence(name: str, history_hours: list[float], now_hours: float, ctx: dict[str, Any], fires: bool) -> None:
    ruleset = one_rule({"absence": {"metric": "body_weight", "within": "48h"}})
    history = [reading("body_weight", 80, h) for h in history_hours]
    firings = sweep([ruleset], history, context(**ctx), at(now_hours))
    assert bool(firings) is fires
    if fires and history_hours:
        assert firings[0].anchor == at(history_hours[-1])  # the gap starts at the last reading


def test_absence_gap_anchor_is_stable_across_sweeps() -> None:
    ruleset = one_rule({"absence": {"metric": "body_weight", "days": 2}})
    history = [reading("body_weight", 80, -80)]
    anchors = {f.anchor for hours in (0, 24, 48) for f in sweep([ruleset], history, context(), at(hours))}
    assert anchors == {at(-80)}


def test_absence_rules_do_not_run_on_events_of_other_metrics() -> None:
    ruleset = one_rule({"absence": {"metric": "body_weight", "within": "48h"}})
    assert evaluate([ruleset], observation(0, systolic_bp=120), [], context()) == []


def test_compiled_check_agrees_with_explained_evaluation() -> None:
    """The fast path decides; the explained path explains. Random data must never split them."""
    from bench.rules import hundred_rules
    from rules.loader import parse_ruleset

    rulesets = [*load_rulesets("rules/library"), parse_ruleset(hundred_rules(), "bench.yaml")]
    rng = random.Random(5)
    metrics = {"systolic_bp": (140, 25), "diastolic_bp": (85, 15), "body_weight": (80, 1.5), "spo2": (92, 4),
               "glucose": (150, 70), "heart_rate": (80, 25), "resp_rate": (18, 6), "phq9_total": (10, 7),
               "phq9_item9": (1, 1), "gad7_total": (9, 6), "phq2_total": (3, 2)}
    checked = held = 0
    for trial in range(25):
        readings = [Reading(m, max(0.0, rng.gauss(mu, sd)), at(-rng.uniform(0, 24 * 10)), f"Observation/{trial}-{i}")
                    for i in range(120) for m, (mu, sd) in [rng.choice(list(metrics.items()))]]
        trigger = {
            m: Reading(m, max(0.0, rng.gauss(mu, sd)), at(0), "Observation/t") for m, (mu, sd) in metrics.items()
        }
        history = History(readings, trigger.values())
        goals = (goal(SBP, high=(rng.choice([130, 140]), "mm[Hg]"), comparator=rng.choice(["<", None])),)
        ctx = context(goals=goals, tz=ZoneInfo("Europe/Berlin"))
        for rs in rulesets:
            for rule in rs.rules:
                for when, check in [(rule.when, compiled(rule)[0]),
                                    *zip([t.when for t in rule.more_severe], compiled(rule)[1], strict=True)]:
                    for now in (at(0), at(30)):
                        trig = trigger if now == at(0) else {}
                        fast = check(Scope(rule, now, trig, history, ctx, None, explain=False))
                        full = evaluate_condition(when, Scope(rule, now, trig, history, ctx, None)).held
                        assert fast == full, (rule.id, trial)
                        checked += 1
                        held += full
    assert checked > 1000 and 100 < held < checked - 100  # both outcomes well represented


def test_window_boundary_is_inclusive_and_time_is_effective_time() -> None:
    ruleset = one_rule({"count": {"where": "systolic_bp >= 160", "at_least": 2, "within": "24h"}})
    history = [reading("systolic_bp", 170, -24), reading("systolic_bp", 170, -24 - 1 / 3600)]
    firings = evaluate([ruleset], observation(0, systolic_bp=170), history, context())
    assert len(firings) == 1
    assert len(firings[0].result.readings) == 2  # the reading 1 s before the window start is out
    assert timedelta(hours=24) == firings[0].at - firings[0].result.readings[0].effective
