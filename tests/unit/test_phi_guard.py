"""The PHI log guard (tests/support/phi_guard.py): what it flags, what it leaves alone, and that
it really fails a test whose logs carry PHI without printing the PHI in the failure."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.phi_guard import Corpus, PhiLogHandler, build_corpus, describe, find_phi, mask, redact

REPO = Path(__file__).resolve().parents[2]


def kinds(text: str, corpus: Corpus | None = None) -> list[str]:
    return [f.kind for f in find_phi(text, corpus or Corpus())]


@pytest.mark.parametrize("line", [
    "sms to +15550100001 failed",
    "sms to +1 (555) 010-0001 failed",
    "recipient +442079460958 refused",
    "recipient +34 612 345 678 refused",
    "from 15550100001",
    "call (555) 555-0123 today",
    "number 555 555 0137 rejected",
    "sender 18005550100",
    "help line 555-0100",
    "subject /phonenumber/ 5555550139",
])
def test_phone_numbers_are_flagged(line: str) -> None:
    assert kinds(line) == ["phone"], line


def test_email_addresses_are_flagged() -> None:
    assert kinds("email to pat@example.org refused") == ["email"]
    assert kinds("recip: <nine.patient+rpm@mail.example.org>") == ["email"]
    assert kinds("smtp login for user rpm at 127.0.0.1:2525") == []


@pytest.mark.parametrize("line", [
    "BP 188/72 for the patient",
    "weight 80.5 kg",
    "gained 2 lb overnight",
    "weight 176.4 [lb_av]",
    "glucose 54 mg/dL",
    "glucose 3.1 mmol/L",
    "pressure 150 mmHg",
    "pressure 150 mm[Hg]",
    "pulse 72 bpm",
    "rate 72 /min",
    "temperature 38.4 Cel",
    "temperature 101.2 °F",
    "PHQ-9 total 14 {score}",
    "values {'systolic': 188}",
    'payload {"bpm": 64}',
    "hr=72",
    "spo2: 88",
    "SpO2 88",
    "SpO2 88%",
    "oxygen saturation 91 %",
    "phq9_total=14",
])
def test_readings_are_flagged(line: str) -> None:
    assert "reading" in kinds(line), line


@pytest.mark.parametrize("line", [
    "took 12.3 ms",
    "sent 3 messages in 0.50s",
    "listening on http://127.0.0.1:8071/api/ingest",
    "vigil 0.1.0 on python 3.11.7",
    "alert episode opened for rule htn-crisis (severity high) for Patient/p-001",
    "Observation/123/_history/2 skipped in the window: unreadable",
    "message 550e8400-e29b-41d4-a716-446655440000 completed via channel",
    "FHIR GET Observation?identifier&_count: HTTP 503, retry 1/3 in 0.25s",
    "reminder sweep: 12 patients, 3 sent, 0 done, 1 deferred, 0 capped, 0 failed",
    "ingest batch: 6 of 120 messages dead-lettered {'unknown_device': 1, 'invalid_json': 5}",
    "window ends 2026-11-20T12:00:00+00:00",
    "2026-11-20 12:00:00,123 INFO handlers.alerting: 2 sent",
    "12% of the batch was dead-lettered",
    "template alert_high.sms.en rendered",
    "released 3 message leases left by a previous host",
    "rule threshold systolic_bp >= 180 loaded",
    "progress 100/330 messages",
    "escalation steps=3 for Task/t-9",
    "sms 5550123abc refused by provider (HTTP 400)",
    "consent Consent/sms-7f3a2b recorded: deny",
    "epoch 1763641200",
    "HTTP Request: POST http://127.0.0.1:45123/sms?api-version=2021-03-07 \"HTTP/1.1 202 Accepted\"",
])
def test_benign_lines_are_not_flagged(line: str) -> None:
    assert find_phi(line, Corpus()) == [], line


def test_names_and_birth_dates_come_from_fixture_files(tmp_path: Path) -> None:
    (tmp_path / "patients.json").write_text(
        '{"resourceType": "Patient", "name": [{"family": "Okonkwo", "given": ["Adaeze", "Jo"]}],'
        ' "birthDate": "1957-03-14", "telecom": [{"system": "phone", "value": "020 7946 0958"}]}')
    (tmp_path / "fixtures.py").write_text(
        'PATIENT = {"resourceType": "Patient", "name": [{"text": "Marisol Quintana-Reyes"}]}\n'
        'FAMILY_NAMES = ("Lindqvist", "Test")\n'
        'other = make(family="Abernathy", birthDate="1949-12-01")\n')
    (tmp_path / "cohort.yaml").write_text("patients:\n  - name:\n      - family: Petrakis\n        given: [Eleni]\n")
    corpus = build_corpus([tmp_path])

    assert {"Okonkwo", "Adaeze", "Marisol", "Quintana-Reyes", "Lindqvist", "Abernathy", "Petrakis",
            "Eleni"} <= corpus.names
    assert "Jo" not in corpus.names and "Test" not in corpus.names  # too short or too common to tell
    assert corpus.birth_dates == {"1957-03-14", "1949-12-01"}
    assert kinds("reminder for Adaeze Okonkwo", corpus) == ["name", "name"]
    assert kinds("patient born 1957-03-14", corpus) == ["birth-date"]
    assert kinds("dob 03/14/1957", corpus) == ["birth-date"]
    assert kinds("number 02079460958 refused", corpus) == ["phone"]  # a fixture number, by its digits
    # Whole words only, and not an ordinary word that merely contains a name.
    assert kinds("Okonkwoville and adaeze", corpus) == []


def test_the_repository_corpus_holds_the_demo_care_team_numbers() -> None:
    from runtime.cohort import STAFF

    corpus = build_corpus()
    assert {phone.lstrip("+") for _, _, phone in STAFF} <= corpus.phones


def test_every_fictional_patient_identity_is_in_the_corpus_so_the_guard_is_not_vacuous() -> None:
    """Demo and test patients (runtime.cohort, tests/support/pipeline.add_patient) carry names and
    birth dates; the guard can only catch them in a log line if its corpus holds them."""
    from runtime.cohort import BIRTH_DATES, FAMILY_NAMES, GIVEN_NAMES, fictional_identity

    corpus = build_corpus()
    for n in range(len(FAMILY_NAMES) * len(GIVEN_NAMES) * len(BIRTH_DATES) // 16):
        identity = fictional_identity(n)
        assert identity["name"][0]["family"] in corpus.names
        assert set(identity["name"][0]["given"]) <= corpus.names
        assert identity["birthDate"] in corpus.birth_dates
    line = f"patient {fictional_identity(3)['name'][0]['family']} born {fictional_identity(3)['birthDate']}"
    assert {f.kind for f in find_phi(line, corpus)} == {"name", "birth-date"}


def test_masking_shows_first_character_and_length_only() -> None:
    assert mask("+15550100001") == "+…(12 chars)"
    line = "sms to +15550100001 after SpO2 88%"
    shown = redact(line)
    assert "15550100001" not in shown and "88" not in shown
    assert shown == "sms to [phone +…(12 chars)] after [reading S…(7 chars)]%"


def test_failure_report_names_logger_code_line_and_kind_with_repeats_counted() -> None:
    from tests.support.phi_guard import Leak

    leak = Leak("call", "handlers.messaging", "INFO", "handlers/messaging.py:65", ("phone (E.164 number)",),
                "sms to [phone +…(12 chars)]")
    text = describe("tests/x.py::test_y", [leak, leak])
    assert "tests/x.py::test_y" in text and "'handlers.messaging'" in text
    assert "handlers/messaging.py:65 ×2: phone (E.164 number)" in text


def test_handler_formats_arguments_and_exceptions_and_skips_far_side_loggers() -> None:
    handler = PhiLogHandler(Corpus())
    handler.when = "call"
    try:
        raise RuntimeError("glucose 54 mg/dL")
    except RuntimeError:
        failed = logging.makeLogRecord({"name": "handlers.sweeps", "levelname": "WARNING", "msg": "sweep failed",
                                        "exc_info": sys.exc_info(), "pathname": str(REPO / "handlers/sweeps.py"),
                                        "lineno": 48})
    args = logging.makeLogRecord({"name": "notifications.dispatch", "msg": "to %s", "args": ("+15550100001",)})
    smtp_server = logging.makeLogRecord({"name": "mail.log", "msg": "DATA readline: b'call 555-0100'"})
    clean = logging.makeLogRecord({"name": "runtime.host", "msg": "released %d message leases", "args": (3,)})
    for record in (failed, args, smtp_server, clean):
        handler.handle(record)

    leaks = handler.take()
    assert [(leak.logger, leak.kinds) for leak in leaks] == [
        ("handlers.sweeps", ("reading (number with a clinical unit)",)),
        ("notifications.dispatch", ("phone (E.164 number)",)),
    ]
    assert leaks[0].where == "handlers/sweeps.py:48" and leaks[0].when == "call"
    assert "54 mg/dL" not in leaks[0].line and "RuntimeError: glucose [reading 5…(8 chars)]" in leaks[0].line
    assert handler.take() == []


INNER_TESTS = '''
import logging
import pytest

log = logging.getLogger("vigil.inner")


def test_leaks_a_phone_number():
    log.info("sms to %s sent", "+15550100001")


def test_clean_lines_pass():
    log.info("sent %d messages in %.1f ms for Patient/%s", 3, 12.5, "p-001")
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.allow_phi_logs
def test_opted_out():
    log.warning("weight %s kg", 80)


def test_leak_in_exception_text():
    try:
        raise ValueError("bp 188/72")
    except ValueError:
        log.exception("evaluation failed")


@pytest.fixture
def noisy():
    yield
    log.debug("teardown glucose 54 mg/dL")


def test_leak_in_fixture_teardown(noisy):
    pass


def test_fails_for_its_own_reason_and_leaks():
    log.error("%s=%d", "hr", 72)  # not a literal: pytest shows this source line in the failure
    assert False, "its own reason"


def test_caplog_still_works(caplog):
    caplog.set_level(logging.INFO)
    log.info("3 messages")
    assert "3 messages" in caplog.text
'''


@pytest.mark.allow_phi_logs  # the inner session runs in this process: its PHI lines reach this test's logs too
def test_the_plugin_fails_leaking_tests_and_masks_its_output(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.support.phi_guard"]\n')
    pytester.makepyfile(test_inner=INNER_TESTS)
    root = logging.getLogger()
    level_before = root.level
    handlers_before = list(root.handlers)

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--strict-markers")

    result.assert_outcomes(passed=4, failed=3, errors=1)  # the teardown error's test itself passed
    out = result.stdout.str()
    failed = {line.split("::")[1].split()[0] for line in result.stdout.lines
              if line.startswith(("FAILED", "ERROR")) and "::" in line}
    assert failed == {"test_leaks_a_phone_number", "test_leak_in_exception_text", "test_leak_in_fixture_teardown",
                      "test_fails_for_its_own_reason_and_leaks"}
    assert "PHI in log records of test_inner.py::test_leaks_a_phone_number" in out
    assert "logger 'vigil.inner' INFO at " in out and "test_inner.py:8: phone (E.164 number)" in out
    assert "[teardown] logger 'vigil.inner' DEBUG" in out and "reading (number with a clinical unit)" in out
    assert "reading (blood-pressure pair)" in out  # found in the formatted exception
    assert "its own reason" in out and "reading (metric with a value)" in out
    # The PHI itself is printed nowhere: not in the report, not in pytest's captured-log sections.
    for phi in ("15550100001", "188/72", "54 mg/dL", "hr=72"):
        assert phi not in out, phi
    assert "sms to [phone +…(12 chars)] sent" in out
    assert root.level == level_before and root.handlers == handlers_before


@pytest.mark.slow
def test_vigil_demo_subprocess_logs_at_debug_carry_no_phi(tmp_path: Path) -> None:
    """The guard sees records logged in this process; a `vigil` subprocess logs to its stderr. Run
    the demo (the whole local pipeline) with DEBUG logging and check every stderr line."""
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG); "
            "from runtime.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "--data-dir", str(tmp_path), "demo", "--patients", "12", "--days", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, redact(proc.stderr[-2000:])
    records = [line for line in proc.stderr.replace("\r", "\n").splitlines() if ":handlers." in line
               or ":notifications." in line or ":runtime." in line or ":ingest." in line]
    assert any("alert episode opened" in line for line in records)  # the logs were really captured
    corpus = build_corpus()
    leaks = [redact(line, corpus) for line in records if find_phi(line, corpus)]
    assert leaks == []
