"""`vigil staff|patients|enroll|devices|goals|report` end to end on a temporary data directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from runtime.cli import main


def _vigil(data_dir: Path, *args: str) -> int:
    return main(["--data-dir", str(data_dir), *args])


def test_enroll_a_patient_from_the_cli_and_see_it_in_the_reports(data_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password-1\n"))
    assert _vigil(data_dir, "staff", "add", "nurse.one", "--role", "nurse", "--password-stdin") == 0
    assert "acts as Practitioner/staff-nurse-one" in capsys.readouterr().out
    assert _vigil(data_dir, "patients", "add", "--given", "Imelda", "--family", "Oyelaran", "--birth-date",
                  "1944-04-19", "--phone", "+15550100321", "--time-zone", "America/Denver", "--id", "pt-9") == 0
    assert capsys.readouterr().out.strip() == "Patient/pt-9"
    assert _vigil(data_dir, "enroll", "pt-9", "hypertension", "--start", "2026-11-01") == 0
    assert _vigil(data_dir, "devices", "register", "pt-9", "cuff-9001", "--kind", "BP cuff") == 0
    assert _vigil(data_dir, "goals", "set", "pt-9", "systolic_bp", "--high", "135") == 0
    capsys.readouterr()
    assert _vigil(data_dir, "patients", "show", "pt-9") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["patient"]["birthDate"] == "1944-04-19"
    assert [c["instantiatesCanonical"] for c in shown["careplans"]] == [["urn:vigil:program:hypertension"]]
    assert shown["devices"][0]["identifier"] == [{"value": "cuff-9001"}]
    assert shown["goals"][0]["target"][0]["detailRange"]["high"]["value"] == 135
    assert _vigil(data_dir, "patients", "list") == 0
    assert "hypertension" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pt-9"))
    assert _vigil(data_dir, "report", "gaps") == 0
    assert capsys.readouterr().out.split() == ["never", "pt-9", "hypertension"]
    assert _vigil(data_dir, "report", "billing", "--month", "2026-11", "--csv", "--as-of", "2026-11-20T12:00:00Z") == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("month,patient") and rows[1].startswith("2026-11,pt-9,2026-11-01,")
    assert rows[1].endswith(",99453")  # set-up this month; no device days, no minutes yet
    assert _vigil(data_dir, "enroll", "pt-9", "hypertension", "--end") == 0
    assert "ended" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (("enroll", "pt-404", "hypertension"), "no Patient/pt-404"),
    (("devices", "register", "pt-404", "dev-1"), "no Patient/pt-404"),
    (("goals", "set", "pt-404", "systolic_bp"), "patient"),
    (("report", "billing", "--month", "2026/11"), "YYYY-MM"),
    (("patients", "add", "--given", "A", "--family", "B", "--birth-date", "1950-01-01", "--time-zone", "Mars/Base"),
     "time zone"),
])
def test_bad_input_is_a_clear_error(data_dir: Path, capsys, args: tuple[str, ...], message: str) -> None:
    assert _vigil(data_dir, *args) == 2
    assert message in capsys.readouterr().err


def test_staff_add_refuses_a_short_password(data_dir: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert _vigil(data_dir, "staff", "add", "nurse2", "--role", "nurse", "--password-stdin") == 2
    assert "at least 10" in capsys.readouterr().err
