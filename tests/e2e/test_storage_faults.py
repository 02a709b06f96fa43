"""Storage faults end every `vigil` command with one line — which file, what happened, what to do —
and exit status 74, the traceback only with -v; and nothing accepted before the fault is lost.

Simulations (a test cannot fill a real disk or mount a read-only file system here):
- full disk: SQLite's `PRAGMA max_page_count` on the FHIR store's connections, capped at the
  file's current size. SQLite then fails a growing write with SQLITE_FULL, "database or disk is
  full": the same error code and path as a file system out of space;
- read-only: the data files opened with SQLite's `mode=ro` (what SQLite falls back to for a file
  it may not write: "attempt to write a readonly database"), and, when the tests do not run as
  root (root ignores file modes), a real `chmod a-w` of the data directory and its files;
- corrupt and truncated: real files overwritten or cut in half.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fhirstore.paging import search_all
from fhirstore.sqlite import SqliteFhirStore
from runtime.cli import main
from runtime.cohort import device

ROOT = Path(__file__).resolve().parents[2]
N = 200


def _seed(data_dir: Path) -> None:
    store = SqliteFhirStore(data_dir / "fhir.db")
    for p in range(4):
        store.update({"resourceType": "Patient", "id": f"sf{p}", "active": True})
        store.update(device(f"sf-dev-{p}", f"sf{p}"))
    store.close()


def _messages(path: Path, n: int = N, day: int = 1) -> Path:
    lines = [json.dumps({"deviceId": f"sf-dev-{i % 4}", "type": "heart_rate",
                         "time": f"2026-11-{day:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
                         "values": {"bpm": 60 + i % 30}}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _observations(data_dir: Path) -> list[dict]:
    store = SqliteFhirStore(data_dir / "fhir.db")
    try:
        return search_all(store, "Observation", {"_count": "1000"})
    finally:
        store.close()


def _content(data_dir: Path) -> list[tuple[str, str, str]]:
    """What the FHIR store holds (every resource and version), whatever SQLite's bytes."""
    store = SqliteFhirStore(data_dir / "fhir.db")
    try:
        return sorted((r["resourceType"], r["id"], r["meta"]["versionId"])
                      for t in ("Patient", "Device", "Observation", "DetectedIssue", "Communication")
                      for r in search_all(store, t, {"_count": "1000"}))
    finally:
        store.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _vigil(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIGIL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("vigil:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def seeded(data_dir: Path) -> Path:
    os.chmod(data_dir, 0o700)
    _seed(data_dir)
    return data_dir


def test_a_corrupt_bus_is_named_and_nothing_else_is_touched(seeded: Path, tmp_path: Path) -> None:
    (seeded / "bus.db").write_bytes(b"this is not a database" * 200)
    bus_before, content_before = _sha(seeded / "bus.db"), _content(seeded)
    result = _vigil(seeded, "ingest", str(_messages(tmp_path / "m.jsonl")))
    assert result.returncode == 74
    line = _one_line(result.stderr)
    assert "bus.db" in line and "not a readable SQLite database" in line and "backup" in line
    # The damaged file is left for the operator to restore (not replaced by an empty bus), and the
    # FHIR store is unchanged.
    assert _sha(seeded / "bus.db") == bus_before
    assert _content(seeded) == content_before
    verbose = _vigil(seeded, "-v", "ingest", str(tmp_path / "m.jsonl"))
    assert verbose.returncode == 74
    assert "Traceback" in verbose.stderr and "database file:" in verbose.stderr


@pytest.mark.parametrize("command", [["dead-letters", "list"], ["purge", "--dry-run"], ["events", "tail"],
                                     ["serve", "--port", "0"], ["demo", "--patients", "2", "--days", "1"]])
def test_every_command_names_the_corrupt_file(seeded: Path, command: list[str]) -> None:
    (seeded / "deadletters.db").write_bytes(b"\x00garbage" * 512)
    (seeded / "bus.db").write_bytes(b"\x00garbage" * 512)
    result = _vigil(seeded, *command)
    assert result.returncode == 74, result.stderr
    line = _one_line(result.stderr)
    assert ("deadletters.db" in line or "bus.db" in line) and "corrupt" in line


def test_a_truncated_fhir_store_refuses_the_ingest_and_a_restored_one_has_everything(seeded: Path,
                                                                                 tmp_path: Path) -> None:
    assert _vigil(seeded, "ingest", str(_messages(tmp_path / "first.jsonl"))).returncode == 0
    backup = tmp_path / "fhir.db.backup"
    backup.write_bytes((seeded / "fhir.db").read_bytes())
    with open(seeded / "fhir.db", "r+b") as f:
        f.truncate(backup.stat().st_size // 2)
    result = _vigil(seeded, "ingest", str(_messages(tmp_path / "second.jsonl", day=2)))
    assert result.returncode == 74
    line = _one_line(result.stderr)
    assert "fhir.db" in line and "corrupt or truncated" in line
    # Restored from the backup, the store has all of the first batch; the refused second batch
    # was never accepted, and ingesting it again now stores it.
    (seeded / "fhir.db").write_bytes(backup.read_bytes())
    assert len(_observations(seeded)) == N
    assert _vigil(seeded, "ingest", str(tmp_path / "second.jsonl")).returncode == 0
    assert len(_observations(seeded)) == 2 * N


def _limit_fhir_db(monkeypatch: pytest.MonkeyPatch, pages: int) -> None:
    real = sqlite3.connect

    def connect(path, *args, **kwargs):  # noqa: ANN001, ANN202
        conn = real(path, *args, **kwargs)
        if str(path).endswith("fhir.db"):
            conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_full_disk_stops_the_ingest_with_one_line_and_loses_nothing(
        seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(seeded / "fhir.db")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    _limit_fhir_db(monkeypatch, pages + 2)  # room for a few readings, not for 200
    code = main(["--data-dir", str(seeded), "ingest", str(_messages(tmp_path / "m.jsonl"))])
    assert code == 74
    line = _one_line(capsys.readouterr().err)
    assert "fhir.db" in line and "disk is full" in line and "free space" in line
    stored = len(_observations(seeded))
    assert stored < N
    from ingest.deadletter import SqliteDeadLetterStore

    assert SqliteDeadLetterStore(seeded / "deadletters.db").count() == 0  # no message blamed for it

    # Space freed: the next run (here an ingest of nothing new) processes what was accepted.
    monkeypatch.undo()
    assert main(["--data-dir", str(seeded), "ingest", str(_messages(tmp_path / "none.jsonl", n=0))]) in (0, 1)
    observations = _observations(seeded)
    assert len(observations) == N
    assert Counter(o["meta"]["versionId"] for o in observations) == {"1": N}  # each stored once


def test_a_read_only_data_directory_refuses_the_ingest_clearly_and_changes_nothing(
        seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: _sha(p) for p in seeded.glob("*.db")}
    real = sqlite3.connect

    def read_only(path, *args, **kwargs):  # noqa: ANN001, ANN202
        kwargs.pop("uri", None)
        return real(f"{Path(path).resolve().as_uri()}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    code = main(["--data-dir", str(seeded), "ingest", str(_messages(tmp_path / "m.jsonl"))])
    assert code == 74
    line = _one_line(capsys.readouterr().err)
    assert ".db" in line and "cannot write" in line and "writable" in line
    monkeypatch.undo()
    # (The simulation cannot stop Vigil creating a missing, empty file; a real read-only
    # directory would. Every file that held data is byte for byte the same.)
    assert {name: _sha(seeded / name) for name in before} == before
    assert _observations(seeded) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes; the mode=ro case covers it")
def test_a_chmod_read_only_data_directory_is_refused_clearly(seeded: Path, tmp_path: Path) -> None:
    messages = _messages(tmp_path / "m.jsonl")
    for p in seeded.iterdir():
        p.chmod(0o400)
    seeded.chmod(0o500)
    try:
        result = _vigil(seeded, "ingest", str(messages))
    finally:
        seeded.chmod(0o700)
        for p in seeded.iterdir():
            p.chmod(0o600)
    assert result.returncode == 74
    assert "cannot write" in _one_line(result.stderr)
    assert _observations(seeded) == []


def test_the_serving_host_stops_on_a_full_disk_instead_of_burning_delivery_attempts(
        seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from common.storage import describe
    from ingest.deadletter import SqliteDeadLetterStore
    from runtime.bootstrap import bootstrap
    from runtime.host import LocalHost
    from runtime.settings import Settings

    conn = sqlite3.connect(seeded / "fhir.db")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    _limit_fhir_db(monkeypatch, pages + 2)
    services = bootstrap(Settings.from_env({}, data_dir=seeded))
    host = LocalHost(services)
    host.acquire()
    stop = threading.Event()
    safety = threading.Timer(60, stop.set)  # the test fails rather than hangs if the host keeps going
    safety.start()
    try:
        host.publish_device_messages(_messages(tmp_path / "m.jsonl").read_bytes().splitlines())
        with pytest.raises(Exception) as caught:
            host.serve_forever(stop)
        assert not stop.is_set()
        fault = describe(caught.value)
        assert fault is not None and fault.kind == "full" and fault.path is not None
        assert fault.path.endswith("fhir.db")
    finally:
        safety.cancel()
        host.release()
        services.close()
    assert SqliteDeadLetterStore(seeded / "deadletters.db").count() == 0
    assert max(host.stats.failures.values(), default=0) <= 1  # no retry loop against a full disk
