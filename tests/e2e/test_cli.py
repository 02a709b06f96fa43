"""The `vigil` command end to end on a temporary data directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runtime.cli import main


def test_demo_summarizes_alerts_and_messages_and_a_rerun_adds_nothing(data_dir: Path, capsys) -> None:
    args = ["--data-dir", str(data_dir), "demo", "--patients", "12", "--days", "6"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "Alerts (DetectedIssue)" in first and "Messages (Communication)" in first
    alerts = int(first.split("Alerts (DetectedIssue)")[1].split()[0])
    messages = int(first.split("Messages (Communication)")[1].split()[0])
    assert alerts > 0 and messages >= alerts
    assert "Dead letters             6" in first
    assert len(list((data_dir / "outbox").glob("*.json"))) == messages

    assert main(args) == 0
    second = capsys.readouterr().out
    for line in ("Observations in FHIR", "Alerts (DetectedIssue)", "Messages (Communication)", "Dead letters"):
        assert "(new this run: 0)" in next(x for x in second.splitlines() if x.startswith(line)), line
    assert len(list((data_dir / "outbox").glob("*.json"))) == messages


def _patient(data_dir: Path, pid: str, device_id: str) -> None:
    from fhirstore.sqlite import SqliteFhirStore
    from runtime.cohort import device

    store = SqliteFhirStore(data_dir / "fhir.db")
    store.update({"resourceType": "Patient", "id": pid, "active": True})
    store.update(device(device_id, pid))


def test_the_default_relative_data_dir_keeps_the_outbox_where_the_summary_says(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    """`make demo` runs with the default `.vigil` (relative): messages land in `.vigil/outbox`."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--patients", "4", "--days", "3"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("messages sent"))
    files = list((tmp_path / ".vigil" / "outbox").glob("*.json"))
    assert files and f"({len(files)} files)" in line and line.split()[2].rstrip("/") == ".vigil/outbox"
    assert not (tmp_path / ".vigil" / ".vigil").exists()


def test_ingest_then_dead_letters_list_show_and_replay_after_the_fix(data_dir: Path, tmp_path: Path, capsys) -> None:
    _patient(data_dir, "p1", "d1")
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([
        json.dumps({"deviceId": "d1", "patientId": "p1", "type": "heart_rate", "time": "2026-11-20T07:00:00Z",
                    "values": {"bpm": 64}}),
        json.dumps({"deviceId": "d2", "patientId": "p2", "type": "heart_rate", "time": "2026-11-20T07:00:00Z",
                    "values": {"bpm": 65}}),
    ]))
    base = ["--data-dir", str(data_dir)]
    assert main([*base, "ingest", str(f)]) == 3  # some messages were dead-lettered
    report = json.loads(capsys.readouterr().out)
    assert (report["new_observations"], report["dead_lettered"]) == (1, 1)
    assert (report["received"], report["written"], report["superseded"], report["unaccounted"]) == (2, 1, 0, 0)

    assert main([*base, "dead-letters", "list"]) == 0
    listing = capsys.readouterr().out
    assert "unknown_device" in listing
    header, row = listing.splitlines()[:2]
    assert header.split()[:3] == ["ID", "CREATED", "(UTC)"]
    dl_id = int(row.split()[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.split()[1])  # when, as people read it
    assert main([*base, "dead-letters", "show", str(dl_id)]) == 0
    shown = capsys.readouterr().out
    assert '"reason": "unknown_device"' in shown and '"patientId": "p2"' in shown
    assert re.search(r'"created_at": "\d{4}-\d\d-\d\dT[\d:]{8}Z"', shown)

    _patient(data_dir, "p2", "d2")  # the fix: the device is registered to its patient
    assert main([*base, "dead-letters", "replay", str(dl_id)]) == 0
    assert "0 failed again" in capsys.readouterr().out
    from fhirstore.sqlite import SqliteFhirStore

    assert SqliteFhirStore(data_dir / "fhir.db").search("Observation", {"_summary": "count"}).total == 2


def test_dead_letters_show_of_unknown_id_is_an_error(data_dir: Path, capsys) -> None:
    assert main(["--data-dir", str(data_dir), "dead-letters", "show", "999"]) == 1
    assert "no dead letter 999" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--data-dir", "x", "nope"], ["demo", "--patients", "many"]])
def test_bad_arguments_exit_with_usage(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(bad)
    assert exc.value.code == 2


REPRO = (b'{"deviceId":"demo-001-cuff","type":"heart_rate","time":"2026-11-28T09:00:00Z","values":{"bpm":60}}\n'
         b'{"deviceId":"demo-001-cuff","type":"heart_rate","time":"2026-11-28T09:00:00Z","values":{"bpm":999}}\n')


def test_ingest_from_stdin_keeps_the_valid_reading_and_dead_letters_the_invalid_one(data_dir: Path) -> None:
    """`vigil ingest -` as a user runs it: two readings of the same time, the later one implausible."""
    import os
    import subprocess
    import sys

    from fhirstore.sqlite import SqliteFhirStore

    _patient(data_dir, "demo-001", "demo-001-cuff")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--data-dir", str(data_dir), "ingest", "-"],
                          input=REPRO, capture_output=True, env=env, cwd=root, timeout=120)
    assert done.returncode == 3, done.stderr.decode()  # the invalid one was dead-lettered
    report = json.loads(done.stdout)
    assert (report["received"], report["written"], report["superseded"], report["dead_lettered"]) == (2, 1, 0, 1)
    assert (report["unaccounted"], report["new_observations"], report["reasons"]) == (0, 1, {"out_of_range": 1})
    store = SqliteFhirStore(data_dir / "fhir.db")
    [obs] = store.search("Observation", {"code": "http://loinc.org|8867-4"}).resources
    assert obs["valueQuantity"]["value"] == 60
    listing = subprocess.run([sys.executable, "-m", "runtime.cli", "--data-dir", str(data_dir), "dead-letters",
                              "list"], capture_output=True, env=env, cwd=root, timeout=60).stdout.decode()
    assert "out_of_range" in listing and len(listing.strip().splitlines()) == 2  # the header and one letter


def test_ingest_of_poison_lines_dead_letters_each_with_its_reason_and_writes_the_rest(data_dir: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    _patient(data_dir, "p1", "d1")
    good = json.dumps({"deviceId": "d1", "type": "heart_rate", "time": "2026-11-20T07:00:00Z",
                       "values": {"bpm": 64}}).encode()
    f = tmp_path / "poison.json"
    f.write_bytes(b"[" + b",".join([
        b'{"deviceId": "d1", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        good.replace(b'"bpm": 64', b'"bpm": ' + b"1" * 5000),
        good.replace(b'"d1"', b'"d\\udc01"'),
        good.replace(b"2026-11-20T07:00:00Z", b"9999-12-31T23:59:59-23:59"),
        good,
    ]) + b"]")
    assert main(["--data-dir", str(data_dir), "ingest", str(f)]) == 3
    report = json.loads(capsys.readouterr().out)
    assert (report["received"], report["written"], report["dead_lettered"], report["unaccounted"]) == (5, 1, 4, 0)
    assert report["reasons"] == {"nesting_too_deep": 1, "number_too_large": 1, "invalid_unicode": 1,
                                 "value_out_of_range": 1}


def test_ingest_of_an_empty_file_receives_nothing_and_succeeds(data_dir: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    assert main(["--data-dir", str(data_dir), "ingest", str(f)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["received"], report["dead_lettered"], report["unaccounted"]) == (0, 0, 0)
