"""`vigil rules validate|test|backtest` end to end, as a care manager runs them."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from common.clock import FixedClock
from fhirstore.paging import search_all
from runtime.cli import main
from runtime.cli_rules import parse_since
from runtime.settings import DEFAULT_RULES
from tests.support.pipeline import add_patient, make_host, reading

HF_RULES = DEFAULT_RULES / "heart-failure.yaml"
ZONE = ZoneInfo("America/Chicago")


@pytest.fixture(autouse=True)
def _no_vigil_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read VIGIL_* settings; a developer's own must not change what these tests see."""
    for name in [n for n in os.environ if n.startswith("VIGIL_")]:
        monkeypatch.delenv(name)


def _run(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), "rules", *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- validate -------------------------------------------------------------------------------------
def test_validate_accepts_the_shipped_library(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, data_dir, "validate", str(DEFAULT_RULES))
    assert code == 0
    files = len(list(DEFAULT_RULES.glob("*.yaml")))
    assert re.search(rf"^ok: {files} ruleset\(s\), \d+ rule\(s\) in ", out, re.M), out


BROKEN_UNIT = """\
ruleset: weigh-trial
title: Trial
program: {id: weigh-trial, canonical: ["urn:vigil:program:weigh-trial"]}
rules:
  - id: weigh-jump
    title: Weight jump
    severity: high
    when:
      change: {metric: body_weight, op: ">=", value: "2 [lbs]", days: 1}
"""

MISSING_SEVERITY = """\
ruleset: bp-trial
title: Trial
program: {id: bp-trial, canonical: ["urn:vigil:program:bp-trial"]}
rules:
  - id: bp-very-high
    title: Very high
    when:
      reading: systolic_bp >= 200
"""


def test_validate_names_file_line_and_field_of_every_problem(tmp_path: Path, data_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a-weight.yaml").write_text(BROKEN_UNIT)
    (rules / "b-bp.yaml").write_text(MISSING_SEVERITY)
    code, out, _ = _run(capsys, data_dir, "validate", str(rules))
    assert code == 1
    lines = out.splitlines()
    unit = next(x for x in lines if x.startswith(f"{rules / 'a-weight.yaml'}:9:"))
    assert "rules[0].when.change.value: unit '[lbs]'" in unit and "[lb_av]" in unit  # what is valid instead
    severity = next(x for x in lines if x.startswith(f"{rules / 'b-bp.yaml'}:"))
    assert "rules[0].severity: missing required field 'severity'" in severity
    assert lines[-1] == f"2 problem(s) in {rules}"


def test_validate_without_dir_checks_the_configured_rules_dir(tmp_path: Path, data_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "weight.yaml").write_text(BROKEN_UNIT)
    monkeypatch.setenv("VIGIL_RULES_PATH", str(tmp_path))
    code, out, _ = _run(capsys, data_dir, "validate")
    assert code == 1 and f"{tmp_path / 'weight.yaml'}:9:" in out


# -- test -----------------------------------------------------------------------------------------
def test_the_library_test_cases_pass(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, data_dir, "test")  # no FILE: every file in <rules dir>/tests/
    assert code == 0
    files = len(list((DEFAULT_RULES / "tests").glob("*.yaml")))
    assert re.search(rf"^total: \d+ passed, 0 failed in {files} file\(s\)$", out, re.M), out
    assert "PASS  overnight gain of 1.2 kg opens one alert" in out
    assert "FAIL" not in out


def test_a_failing_case_is_reported_with_its_reason(tmp_path: Path, data_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "my-cases.yaml"
    cases.write_text(f"""\
ruleset: {HF_RULES}
timezone: America/Chicago
cases:
  - name: half a kilo overnight alerts (it should not)
    readings:
      - {{at: "2026-11-01T07:00:00-06:00", body_weight: 80.0}}
      - {{at: "2026-11-02T07:00:00-06:00", body_weight: 80.5}}
    expect:
      - {{rule: hf-weight-gain-day}}
  - name: 1.2 kg overnight alerts
    readings:
      - {{at: "2026-11-01T07:00:00-06:00", body_weight: 80.0}}
      - {{at: "2026-11-02T07:00:00-06:00", body_weight: 81.2}}
    expect:
      - {{rule: hf-weight-gain-day, severity: high}}
""")
    code, out, _ = _run(capsys, data_dir, "test", str(cases))
    assert code == 1
    assert "FAIL  half a kilo overnight alerts (it should not)\n" \
           "      expected an alert of rule hf-weight-gain-day but none opened" in out
    assert "PASS  1.2 kg overnight alerts" in out
    assert out.rstrip().endswith(f"{cases}: 1 passed, 1 failed")


def test_a_test_file_that_does_not_load_fails_the_run(tmp_path: Path, data_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("ruleset: no-such-ruleset.yaml\ncases:\n  - {name: x, readings: [], expect: []}\n")
    library = DEFAULT_RULES / "tests" / "heart-failure.yaml"
    code, out, _ = _run(capsys, data_dir, "test", str(library), str(cases))
    assert code == 1
    assert f"{tmp_path / 'no-such-ruleset.yaml'}: cannot read the file" in out
    assert f"{cases}: not run" in out
    assert re.search(r"^total: \d+ passed, 0 failed in 2 file\(s\), 1 file\(s\) not run$", out, re.M), out


# -- backtest -------------------------------------------------------------------------------------
FIRST_DAY = datetime(2026, 10, 26, 7, 0, tzinfo=ZONE)
GAIN_DAY = 15  # 10 November: 80.0 -> 81.2 kg overnight


def _weights_with_gain() -> list[float]:
    before = [(80.0, 80.1, 79.9)[i % 3] for i in range(GAIN_DAY - 1)] + [80.0]
    return before + [81.2, 81.3, 81.2, 81.3, 81.2, 81.3]  # through 15 November


@pytest.fixture(scope="module")
def history_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three weeks of morning weights ingested through the whole local pipeline: hf-1 gains 1.2 kg
    overnight on 10 November, hf-2 is stable, bp-1 is in the hypertension program only."""
    data_dir = tmp_path_factory.mktemp("history")
    host = make_host(data_dir, FixedClock(datetime(2026, 11, 15, 18, 0, tzinfo=UTC)))
    for spec in host.of_kind("timerTrigger"):
        spec.next_run = float("inf")  # the replay below must compare with event-driven alerts only
    host.acquire()
    s = host.services
    for pid, programs in (("hf-1", ("heart-failure",)), ("hf-2", ("heart-failure",)), ("bp-1", ("hypertension",))):
        add_patient(s, pid, programs=programs)
        patient = s.store.read("Patient", pid)
        patient["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": ZONE.key}]
        s.store.update(patient)
    messages = []
    for day, kg in enumerate(_weights_with_gain()):
        at = (FIRST_DAY + timedelta(days=day)).isoformat()
        messages.append(reading("hf-1", "body_weight", at, {"weight": kg}))
        messages.append(reading("hf-2", "body_weight", at, {"weight": (70.0, 70.2)[day % 2]}))
        messages.append(reading("bp-1", "body_weight", at, {"weight": 90.0 + (day % 2) * 1.5}))
    host.publish_device_messages(messages)
    assert host.run_until_idle(timeout_s=120)
    live = [i["code"]["coding"][0]["code"] for i in search_all(s.store, "DetectedIssue", {})]
    assert live == ["hf-weight-gain-day"]  # what the live pipeline opened, for comparison
    host.release()
    s.close()
    return data_dir


def _row(out: str, rule: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [rule])


def test_backtest_reports_alerts_per_rule_per_patient_week(history_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "20d", "--until", "2026-11-15")
    assert code == 0, err
    assert f"backtest of ruleset heart-failure ({HF_RULES}), program heart-failure" in out
    # Two enrolled patients (bp-1 is not in the program), 20 readings each in the window; both sent
    # before it began, so each counts from --since (26 Oct 23:59 UTC) to 15 November 13:00 UTC, when
    # the data ends: 2 x 19.5 days = 5.6 patient-weeks, not the 5.7 of the whole 20-day window.
    assert ("2 patients, 40 readings, 5.6 patient-weeks (2026-10-26 to 2026-11-15; weeks while enrolled and "
            "sending)") in out
    assert _row(out, "hf-weight-gain-day") == ["hf-weight-gain-day", "1", "1", "0.179"]  # same as live
    for rule in ("hf-weight-gain-3-days", "hf-weight-gain-week", "hf-weight-loss", "hf-heart-rate-high",
                 "hf-no-weight"):
        assert _row(out, rule)[1:3] == ["0", "0"], rule
    assert _row(out, "2026-W46") == ["2026-W46", "hf-weight-gain-day", "1", "1"]  # week, rule, alerts, patients
    assert "backtest: 2/2 patients" in err  # progress goes to stderr


def test_backtest_of_one_patient_and_of_a_trial_ruleset_file(history_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "2026-10-27",
                        "--until", "2026-11-15", "--patient", "Patient/hf-2")
    assert code == 0
    assert "1 patients, 20 readings" in out and "no alerts would have opened" in out

    trial = tmp_path / "hf-trial.yaml"
    trial.write_text("""\
ruleset: hf-trial
title: Trial thresholds for daily gain
program: {id: heart-failure, canonical: ["urn:vigil:program:heart-failure"]}
rules:
  - id: hf-gain-1kg-trial
    title: Gain of 1 kg since yesterday
    severity: moderate
    when:
      change: {metric: body_weight, op: ">=", value: 1 kg, days: 1}
    enabled: false
  - id: hf-gain-3lb-trial
    title: Gain of 3 lb since yesterday
    severity: high
    when:
      change: {metric: body_weight, op: ">=", value: "3 [lb_av]", days: 1}
""")
    code, out, _ = _run(capsys, history_dir, "backtest", str(trial), "--since", "3w", "--until", "2026-11-15")
    assert code == 0
    assert _row(out, "hf-gain-1kg-trial")[1:3] == ["1", "1"]  # measured although not live
    assert _row(out, "hf-gain-3lb-trial")[1:3] == ["0", "0"]
    assert "not live yet (enabled: false), measured anyway: hf-gain-1kg-trial" in out


def test_backtest_honours_a_per_patient_override_on_the_care_plan(history_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fhirstore.sqlite import SqliteFhirStore
    from rules.enrollment import override_extension
    from rules.quantity import Quantity

    store = SqliteFhirStore(history_dir / "fhir.db")
    plan = store.read("CarePlan", "hf-1-heart-failure")
    tuned = {**plan, "extension": [override_extension("hf-weight-gain-day", param="max_gain",
                                                      value=Quantity(3, "[lb_av]"))]}
    store.update(tuned)
    try:
        code, out, _ = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "20d",
                            "--until", "2026-11-15", "--patient", "hf-1")
    finally:
        store.update({k: v for k, v in plan.items() if k != "meta"})
        store.close()
    assert code == 0
    assert _row(out, "hf-weight-gain-day")[1:3] == ["0", "0"]  # 1.2 kg is under this patient's 3 lb


def test_backtest_reads_a_bare_date_care_plan_end_as_the_patients_day(history_dir: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """hf-2 (Chicago, UTC-6) left the program on 10 November: the whole of that local day, which
    runs to 11 November 05:59:59 UTC, as the live pipeline reads it (rules.enrollment)."""
    from fhirstore.sqlite import SqliteFhirStore

    store = SqliteFhirStore(history_dir / "fhir.db")
    plan = store.read("CarePlan", "hf-2-heart-failure")
    store.update({**plan, "period": {**plan.get("period", {}), "end": "2026-11-10"}})
    try:
        code, out, err = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "2026-11-11T03:00:00Z",
                              "--until", "2026-11-15", "--patient", "hf-2")
    finally:
        store.update({k: v for k, v in plan.items() if k != "meta"})
        store.close()
    assert code == 0, err
    assert "1 patients" in out  # enrolled for the first three hours of the window


def test_backtest_errors_say_what_to_change(history_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, history_dir, "backtest", "heart-falure", "--since", "90d")
    assert code == 2
    assert "unknown ruleset 'heart-falure'" in err
    assert "valid: copd, depression, diabetes, heart-failure, hypertension" in err

    code, _, err = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "3mo")
    assert code == 2 and "--since '3mo' is not a duration" in err

    code, _, err = _run(capsys, history_dir, "backtest", "heart-failure", "--since", "90d", "--patient", "bp-1")
    assert code == 1 and "Patient/bp-1 is not enrolled in program heart-failure" in err

    code, _, err = _run(capsys, tmp_path / "empty", "backtest", "heart-failure", "--since", "90d")
    assert code == 2 and "no FHIR store at" in err


def test_since_takes_hours_days_weeks_or_a_date() -> None:
    until = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert parse_since("90d", until) == until - timedelta(days=90)
    assert parse_since("12w", until) == until - timedelta(weeks=12)
    assert parse_since("48h", until) == until - timedelta(hours=48)
    assert parse_since("2026-11-01", until) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00:00-06:00", until) == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)
