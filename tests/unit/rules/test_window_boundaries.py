"""Every shipped windowed rule at the edge of its window (docs/rules.md "Windows").

Absence rules are gap lengths: "no reading for N days" opens within one sweep interval (the alert
sweep runs every 15 minutes) after N x 24 h without data, and not before, whatever the patient's
zone and whatever the time of day of the last reading. N is read from the rule's own title, so a
rule that says "3 days" is held to 3 x 24 h.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rules.enrollment import PatientContext
from rules.evaluate import evaluate, sweep
from rules.kinds.absence import AbsenceCond
from rules.loader import load_rulesets
from rules.model import Rule, Ruleset, iter_conditions
from rules.readings import Reading
from rules.window import History

LIBRARY = load_rulesets("rules/library")
SWEEP_EVERY = timedelta(minutes=15)  # triggers/timers.py alert_sweep: "0 */15 * * * *"
ZONES = ("UTC", "America/Chicago", "Pacific/Auckland", "Asia/Kolkata")


def _absence_rules() -> list[tuple[Ruleset, Rule]]:
    return [(rs, rule) for rs in LIBRARY for rule in rs.rules if rule.has_absence]


def _declared_gap(rule: Rule) -> timedelta:
    match = re.search(r"for (\d+) (day|week)s?\b", rule.title)
    assert match, f"{rule.id}: the title should say how long ('for 3 days')"
    n = int(match.group(1))
    return timedelta(days=n) if match.group(2) == "day" else timedelta(weeks=n)


def _absence_metric(rule: Rule) -> str:
    [cond] = [c for _, c in iter_conditions(rule.when) if isinstance(c, AbsenceCond)]
    return cond.absence.metric


def test_every_shipped_program_has_its_absence_rule_checked() -> None:
    assert {rule.id for _, rule in _absence_rules()} == {
        "htn-no-readings", "hf-no-weight", "copd-no-spo2", "dm-no-glucose", "phq9-overdue", "pd-no-vitals"}


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("local_time", ["07:00", "23:50", "00:05"])
@pytest.mark.parametrize(("ruleset", "rule"), _absence_rules(), ids=lambda x: getattr(x, "id", ""))
def test_an_absence_rule_opens_within_one_sweep_after_n_times_24h(ruleset: Ruleset, rule: Rule, zone: str,
                                                                   local_time: str) -> None:
    tz = ZoneInfo(zone)
    hour, minute = map(int, local_time.split(":"))
    last = datetime(2026, 6, 10, hour, minute, tzinfo=tz).astimezone(UTC)
    metric = _absence_metric(rule)
    history = History([Reading(metric, 5.0, last, "Observation/last")])
    ctx = PatientContext("Patient/p1", tz=tz, enrolled_since=last - timedelta(days=60))
    gap = _declared_gap(rule)
    # Sweeps on the quarter hour, as the timer runs them, from well before the gap ends.
    t = (last + gap - timedelta(hours=30)).replace(minute=0, second=0, microsecond=0)
    opened = None
    while t <= last + gap + timedelta(hours=30):
        if any(f.rule_id == rule.id for f in sweep([ruleset], history, ctx, t)):
            opened = t
            break
        t += SWEEP_EVERY
    assert opened is not None, f"{rule.id} never opened"
    assert last + gap < opened <= last + gap + SWEEP_EVERY, (
        f"{rule.id} opened {opened - last} after the last reading; it says {gap}")


def test_exactly_n_times_24h_is_not_yet_a_gap() -> None:
    [(ruleset, rule)] = [(rs, r) for rs, r in _absence_rules() if r.id == "htn-no-readings"]
    last = datetime(2026, 6, 10, 7, 0, tzinfo=UTC)
    history = History([Reading("systolic_bp", 120.0, last, "Observation/last")])
    ctx = PatientContext("Patient/p1", enrolled_since=last - timedelta(days=60))
    assert not sweep([ruleset], history, ctx, last + timedelta(hours=72))
    assert [f.rule_id for f in sweep([ruleset], history, ctx, last + timedelta(hours=72, seconds=1))] == [
        "htn-no-readings"]


def test_a_patient_enrolled_without_any_reading_is_alerted_n_times_24h_after_enrolment() -> None:
    [(ruleset, rule)] = [(rs, r) for rs, r in _absence_rules() if r.id == "hf-no-weight"]
    enrolled = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)
    ctx = PatientContext("Patient/p1", enrolled_since=enrolled)
    assert not sweep([ruleset], History([]), ctx, enrolled + timedelta(hours=47, minutes=45))
    assert sweep([ruleset], History([]), ctx, enrolled + timedelta(hours=48, minutes=15))


# -- the other windowed rules --------------------------------------------------------------------

def _rule(rule_id: str) -> tuple[Ruleset, Rule]:
    return next((rs, r) for rs in LIBRARY for r in rs.rules if r.id == rule_id)


def _fired(rule_id: str, series: list[tuple[datetime, dict[str, float]]], tz: str = "America/Chicago") -> list[str]:
    """Severities of `rule_id` firings as each reading arrives in time order."""
    ruleset, _ = _rule(rule_id)
    ctx = PatientContext("Patient/p1", tz=ZoneInfo(tz))
    seen: list[Reading] = []
    out = []
    for i, (when, values) in enumerate(series):
        trigger = [Reading(m, v, when.astimezone(UTC), f"Observation/o{i}") for m, v in values.items()]
        seen += trigger
        out += [f.severity for f in evaluate([ruleset], trigger, History(seen), ctx) if f.rule_id == rule_id]
    return out


CHI = ZoneInfo("America/Chicago")


def _local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=CHI)


# Heart-failure weight changes are calendar days (docs/rules.md "Windows"): the morning weight of N
# days before counts even when today's is later in the day; one from the day before that does not.
@pytest.mark.parametrize(("rule_id", "days", "gain"), [
    ("hf-weight-gain-day", 1, 1.0), ("hf-weight-gain-3-days", 3, 2.1), ("hf-weight-gain-week", 7, 2.4)])
def test_heart_failure_weight_gain_windows_are_calendar_days(rule_id: str, days: int, gain: float) -> None:
    today = 20
    inside = [
        (_local(today - days, 0, 1), {"body_weight": 80.0}),
        (_local(today, 23, 50), {"body_weight": 80.0 + gain}),
    ]
    outside = [(_local(today - days - 1, 23, 59), {"body_weight": 80.0}),
               (_local(today, 7, 0), {"body_weight": 80.0 + gain})]
    assert _fired(rule_id, inside) == ["high"]
    assert _fired(rule_id, outside) == []


def test_heart_failure_weight_loss_window_is_two_calendar_days() -> None:
    assert _fired("hf-weight-loss", [(_local(18, 0, 1), {"body_weight": 80.0}),
                                     (_local(20, 23, 0), {"body_weight": 79.0})]) == ["moderate"]
    assert _fired("hf-weight-loss", [(_local(17, 23, 59), {"body_weight": 80.0}),
                                     (_local(20, 6, 0), {"body_weight": 79.0})]) == []


def test_copd_two_low_readings_within_4h_is_high_and_4h_1min_apart_is_not() -> None:
    assert _fired("copd-spo2-low", [(_local(20, 8), {"spo2": 85}), (_local(20, 12), {"spo2": 85})]) == [
        "moderate", "high"]
    assert _fired("copd-spo2-low", [(_local(20, 8), {"spo2": 85}), (_local(20, 12, 1), {"spo2": 85})]) == [
        "moderate", "moderate"]


def test_persistent_hyperglycemia_window_is_a_rolling_24h() -> None:
    assert _fired("dm-hyperglycemia-persistent", [(_local(20, 8), {"glucose": 310}),
                                                  (_local(21, 8), {"glucose": 305})]) == ["high"]
    assert _fired("dm-hyperglycemia-persistent", [(_local(20, 8), {"glucose": 310}),
                                                  (_local(21, 8, 1), {"glucose": 305})]) == []


def test_home_bp_mean_window_is_a_rolling_7_days() -> None:
    readings = [(_local(1, 8), {"systolic_bp": 150, "diastolic_bp": 78}),
                (_local(4, 8), {"systolic_bp": 150, "diastolic_bp": 78})]
    assert _fired("htn-weekly-mean-above-goal", [*readings, (_local(8, 8), {"systolic_bp": 150, "diastolic_bp": 78})])
    assert not _fired("htn-weekly-mean-above-goal",
                      [*readings, (_local(8, 8, 1), {"systolic_bp": 150, "diastolic_bp": 78})])


def test_an_absence_written_in_days_is_the_same_gap_length() -> None:
    from rules.loader import RuleLoadError
    from tests.unit.rules.helpers import one_rule

    in_days = one_rule({"absence": {"metric": "body_weight", "days": 3}}).rules[0]
    rolling = one_rule({"absence": {"metric": "body_weight", "within": "3d"}}).rules[0]
    assert in_days.when == rolling.when and in_days.horizon == timedelta(days=3)
    with pytest.raises(RuleLoadError, match="at least 1 day"):
        one_rule({"absence": {"metric": "body_weight", "days": 0}})
