"""Care-manager YAML test cases (the library's must pass) and the backtest replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rules.backtest import PatientData, backtest
from rules.enrollment import PatientContext
from rules.loader import RuleLoadError, load_rulesets, load_test_suite
from rules.readings import Reading
from rules.testcases import run_case, run_suite

LIBRARY_TESTS = sorted(Path("rules/library/tests").glob("*.yaml"))
LIBRARY_CASES = [(path, case.name) for path in LIBRARY_TESTS for case in load_test_suite(path)[0].cases]


def test_every_library_ruleset_has_test_cases() -> None:
    rulesets = {p.stem for p in Path("rules/library").glob("*.yaml")}
    assert rulesets == {p.stem for p in LIBRARY_TESTS}


@pytest.mark.parametrize(("path", "name"), LIBRARY_CASES, ids=[f"{p.stem}: {n}" for p, n in LIBRARY_CASES])
def test_library_case(path: Path, name: str) -> None:
    suite, ruleset = load_test_suite(path)
    case = next(c for c in suite.cases if c.name == name)
    result = run_case(case, ruleset, suite.timezone)
    assert result.passed, result.problems


SUITE = """ruleset: rules.yaml
timezone: America/Chicago
cases:
  - name: {name}
    readings:
      - {{at: "2025-03-01T07:00:00-06:00", body_weight: 80.0}}
      - {{at: "2025-03-02T07:00:00-06:00", body_weight: 81.5}}
    expect: {expect}
"""
RULES = """ruleset: hf
title: HF
program: {id: hf, category: [hf]}
rules:
  - id: gain
    title: Gain
    severity: high
    params: {max_gain: "2 [lb_av]"}
    when:
      change: {metric: body_weight, op: ">=", value: {param: max_gain}, days: 1}
"""


def write_suite(tmp_path: Path, name: str, expect: str) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    path = tmp_path / "cases.yaml"
    path.write_text(SUITE.format(name=name, expect=expect))
    return path


def test_a_case_that_expects_nothing_fails_on_an_unexpected_alert(tmp_path: Path) -> None:
    suite, ruleset = load_test_suite(write_suite(tmp_path, "quiet", "[]"))
    [result] = run_suite(suite, ruleset)
    assert not result.passed
    assert result.problems[0].startswith("unexpected alert of rule gain at 2025-03-02T13:00:00+00:00")


def test_a_missing_expected_alert_fails(tmp_path: Path) -> None:
    expect = '[{rule: gain, severity: moderate}]'
    suite, ruleset = load_test_suite(write_suite(tmp_path, "wrong severity", expect))
    [result] = run_suite(suite, ruleset)
    assert not result.passed and "expected an alert of rule gain but none opened" in result.problems[0]


def test_a_matching_expectation_passes_and_reports_the_alert(tmp_path: Path) -> None:
    expect = '[{rule: gain, at: "2025-03-02T07:00:00-06:00", severity: high, text: "1.5 kg"}]'
    suite, ruleset = load_test_suite(write_suite(tmp_path, "gain", expect))
    [result] = run_suite(suite, ruleset)
    assert result.passed and [a.rule for a in result.alerts] == ["gain"]


def test_unknown_override_fails_the_case_with_a_clear_message(tmp_path: Path) -> None:
    path = write_suite(tmp_path, "bad override", "[]")
    path.write_text(
        path.read_text().replace("    readings:", "    overrides: {gain: {params: {max: 3}}}\n    readings:")
    )
    suite, ruleset = load_test_suite(path)
    [result] = run_suite(suite, ruleset)
    assert result.problems == ["overrides.gain: unknown param(s) max; valid: max_gain"]


def test_test_file_errors_name_the_line(tmp_path: Path) -> None:
    path = write_suite(tmp_path, "typo", "[]")
    path.write_text(path.read_text().replace("body_weight: 81.5", "bodyweight: 81.5"))
    with pytest.raises(RuleLoadError) as err:
        load_test_suite(path)
    assert "cases.yaml:7:" in str(err.value) and "unknown metric 'bodyweight'" in str(err.value)
    path.write_text(path.read_text().replace('"2025-03-01T07:00:00-06:00"', '"2025-03-01T07:00:00"'))
    with pytest.raises(RuleLoadError, match="is not a date-time with a UTC offset"):
        load_test_suite(path)


def weights(patient: str, values: list[float], start: datetime) -> list[Reading]:
    return [Reading("body_weight", v, start + timedelta(days=i, hours=13), f"Observation/{patient}-{i}")
            for i, v in enumerate(values)]


def test_backtest_counts_alerts_and_firings_per_rule_per_patient_week() -> None:
    hf = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"]
    start = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
    gaining = weights("a", [80.0, 81.0, 82.1, 82.2, 82.3, 82.4, 82.5], start)  # two day-gains, one 3-day gain
    steady = weights("b", [70.0] * 7, start)
    cohort = {"Patient/a": PatientData(PatientContext("Patient/a", enrolled_since=start), gaining),
              "Patient/b": PatientData(PatientContext("Patient/b", enrolled_since=start), steady)}
    report = backtest(hf, cohort, start, start + timedelta(days=7))
    # Counted from each patient's first reading (day 0, 13:00) to the end of the data (day 6, 13:00).
    assert (report.patients, report.readings, report.patient_weeks) == (2, 14, 12 / 7)
    assert report.alerts[("hf-weight-gain-day", "Patient/a", "2025-W10")] == 1  # one episode...
    assert report.firings[("hf-weight-gain-day", "Patient/a", "2025-W10")] == 2  # ...for two firings
    assert report.alerts[("hf-weight-gain-3-days", "Patient/a", "2025-W10")] == 1
    assert not any(patient == "Patient/b" for _, patient, _ in report.alerts)
    per_rule = {rule: (alerts, firings, rate) for rule, alerts, firings, rate in report.per_rule()}
    assert per_rule["hf-weight-gain-day"] == (1, 2, 7 / 12)
    assert "hf-weight-gain-day" in report.text() and "2 patients, 14 readings" in report.text()


def test_backtest_absence_sweeps_open_one_episode_per_gap() -> None:
    hf = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"]
    start = datetime(2025, 3, 3, tzinfo=UTC)
    sparse = weights("c", [80.0], start) + weights("c2", [80.0], start + timedelta(days=10))
    cohort = {"Patient/c": PatientData(PatientContext("Patient/c", enrolled_since=start), sparse)}
    # The rest of the cohort sends until day 20, so this patient's silence after day 10 is a gap too.
    report = backtest(hf, cohort, start, start + timedelta(days=20), end_of_data=start + timedelta(days=20))
    gaps = sum(n for (rule, _, _), n in report.alerts.items() if rule == "hf-no-weight")
    assert gaps == 2  # day 1 -> day 10 and day 10 -> day 20, each opened once although swept often
    # Alone, the data ends at day 10: the time after it is not replayed (nor counted in patient-weeks).
    alone = backtest(hf, cohort, start, start + timedelta(days=20))
    assert sum(n for (rule, _, _), n in alone.alerts.items() if rule == "hf-no-weight") == 1
    assert alone.patient_weeks == 10 / 7


def test_backtest_replays_only_while_enrolled_and_sending_and_agrees_with_live_absence_timing() -> None:
    """Enrolled a month before the device sent anything, 14 days of daily BP, backtested over 90
    days that run on past the end of the data: no absence alert (the live pipeline over the same
    data opens none) and 13 days of patient-time, not 90."""
    htn = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "hypertension"]
    first = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    enrolled = first - timedelta(days=31)
    bp = [r for d in range(14) for r in (
        Reading("systolic_bp", 120.0, first + timedelta(days=d), f"Observation/bp{d}"),
        Reading("diastolic_bp", 75.0, first + timedelta(days=d), f"Observation/bp{d}"))]
    cohort = {f"Patient/h{i}": PatientData(PatientContext(f"Patient/h{i}", enrolled_since=enrolled), bp)
              for i in range(15)}
    until = first + timedelta(days=31)
    report = backtest(htn, cohort, until - timedelta(days=90), until)
    assert sum(n for (rule, _, _), n in report.alerts.items() if rule == "htn-no-readings") == 0
    assert report.patient_weeks == 15 * 13 / 7
    # A real gap inside the data (5 days without a reading) opens one alert, as live would.
    gap = [r for r in bp if not first + timedelta(days=3) <= r.effective <= first + timedelta(days=6)]
    one = backtest(htn, {"Patient/g": PatientData(PatientContext("Patient/g", enrolled_since=enrolled), gap)},
                   until - timedelta(days=90), until)
    assert one.alerts[("htn-no-readings", "Patient/g", "2026-W45")] == 1
    assert sum(one.alerts.values()) == 1


def test_results_text_for_the_cli(tmp_path: Path) -> None:
    from rules.testcases import results_text

    suite, ruleset = load_test_suite(write_suite(tmp_path, "quiet", "[]"))
    text = results_text(run_suite(suite, ruleset), "cases.yaml")
    assert text.startswith("FAIL  quiet\n      unexpected alert of rule gain")
    assert text.endswith("cases.yaml: 0 passed, 1 failed")


def test_backtest_closes_episodes_when_the_live_sweep_would_so_a_later_firing_is_a_new_alert() -> None:
    """hf-heart-rate-high resolves 24 h after it last held. Live, the 15-minute sweep closes it at
    10:15 the next day, so the reading of 23:00 (past the 12 h cool-down) opens a second alert; a
    once-a-day sweep (09:00, 23 h after it held) would still have it open and count one."""
    hf = [rs for rs in load_rulesets("rules/library") if rs.ruleset == "heart-failure"]
    day0 = datetime(2025, 3, 3, tzinfo=UTC)
    rates = [(10, 135.0), (11, 70.0), (24 + 23, 136.0)]
    readings = [Reading("heart_rate", v, day0 + timedelta(hours=h), f"Observation/hr{h}") for h, v in rates]
    cohort = {"Patient/r": PatientData(PatientContext("Patient/r", enrolled_since=day0), readings)}
    report = backtest(hf, cohort, day0, day0 + timedelta(days=3))
    assert sum(n for (rule, _, _), n in report.alerts.items() if rule == "hf-heart-rate-high") == 2
