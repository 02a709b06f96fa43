"""Every SQLite file carries a schema version; files of the previous release open and migrate; `vigil
backup` / `vigil restore` copy a data directory with SQLite's online backup while a host runs on it."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from common.sqlite_schema import Schema, SchemaError, migrate, user_version
from fhirstore.errors import ServerError
from fhirstore.sqlite import FHIR_SCHEMA, SqliteFhirStore
from ingest.deadletter import DEAD_LETTER_SCHEMA, SqliteDeadLetterStore
from notifications.channels.ledger import SEND_LEDGER_SCHEMA, SqliteSendLedger
from runtime.bus import BUS_SCHEMA, LocalBus
from runtime.cli import main
from tests.support.pipeline import add_patient, count, make_host, reading

# Written by the release before schema versions (`vigil demo --patients 2 --days 2`, then VACUUM INTO).
PREVIOUS = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release"
SCHEMAS = {"fhir.db": FHIR_SCHEMA, "bus.db": BUS_SCHEMA, "deadletters.db": DEAD_LETTER_SCHEMA,
           "sends.db": SEND_LEDGER_SCHEMA}


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return user_version(conn)
    finally:
        conn.close()


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(PREVIOUS, data)
    return data


def test_the_previous_release_files_have_no_or_an_older_version(previous: Path) -> None:
    found = {name: _version(previous / name) for name in SCHEMAS}
    assert found == {"fhir.db": 1, "bus.db": 0, "deadletters.db": 0, "sends.db": 0}


def test_a_previous_release_data_directory_opens_and_migrates(previous: Path) -> None:
    host = make_host(previous)
    try:
        services = host.services
        assert count(services, "Patient") == 2
        assert len(services.dead_letters.list()) == 5
        add_patient(services, "p-new")
        host.publish_device_messages([reading("p-new", "heart_rate", "2026-11-20T14:00:00Z", {"bpm": 71})])
        assert host.run_until_idle(timeout_s=60)
        assert count(services, "Observation", subject="Patient/p-new") == 1
    finally:
        host.services.close()
    assert {name: _version(previous / name) for name in SCHEMAS} == {n: s.version for n, s in SCHEMAS.items()}


def test_each_store_writes_its_version_into_a_new_file(tmp_path: Path) -> None:
    SqliteFhirStore(tmp_path / "fhir.db").close()
    LocalBus(tmp_path / "bus.db").close()
    SqliteDeadLetterStore(tmp_path / "deadletters.db")
    SqliteSendLedger(tmp_path / "sends.db").close()
    for name, schema in SCHEMAS.items():
        assert _version(tmp_path / name) == schema.version >= 1, name


def test_a_file_from_a_newer_vigil_is_refused_with_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "fhir.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {FHIR_SCHEMA.version + 1}")
    conn.close()
    with pytest.raises(
        ServerError, match=rf"schema version {FHIR_SCHEMA.version + 1}; this Vigil reads versions up to"
    ):
        SqliteFhirStore(path)
    bus = tmp_path / "bus.db"
    conn = sqlite3.connect(bus)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="bus file has schema version 99"):
        LocalBus(bus)


def test_a_later_step_runs_once_and_a_failing_step_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path, isolation_level=None)
    v1 = Schema("x", ["CREATE TABLE t (a INTEGER)"])
    assert migrate(conn, v1, path) == 0
    v2 = Schema("x", [*v1.steps, "ALTER TABLE t ADD COLUMN b TEXT"])
    assert migrate(conn, v2, path) == 1
    assert migrate(conn, v2, path) == 2  # nothing left to run
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["a", "b"]

    def broken(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE t ADD COLUMN c TEXT")
        raise RuntimeError("step failed")

    with pytest.raises(RuntimeError):
        migrate(conn, Schema("x", [*v2.steps, broken]), path)
    assert user_version(conn) == 2
    assert [r[1] for r in conn.execute("PRAGMA table_info(t)")] == ["a", "b"]
    conn.close()


def test_backup_while_the_host_runs_then_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    host = make_host(data)
    host.acquire()
    stop = threading.Event()
    runner = threading.Thread(target=host.serve_forever, args=(stop,), daemon=True)
    runner.start()
    try:
        add_patient(host.services, "p1")
        host.publish_device_messages([reading("p1", "heart_rate", f"2026-11-20T1{i}:00:00Z", {"bpm": 70 + i})
                                      for i in range(4)])
        # Taken while the host's thread writes: each file is still a consistent snapshot.
        assert main(["--data-dir", str(data), "backup", str(tmp_path / "b1")]) == 0
        with pytest.raises(SystemExit, match="a Vigil host is running"):
            main(["--data-dir", str(data), "restore", str(tmp_path / "b1")])
    finally:
        stop.set()
        runner.join(timeout=30)
    assert "backed up" in capsys.readouterr().out
    for name in SCHEMAS:
        conn = sqlite3.connect(tmp_path / "b1" / name)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
    assert host.run_until_idle(timeout_s=60)
    observations = count(host.services, "Observation", subject="Patient/p1")
    assert observations == 4
    assert main(["--data-dir", str(data), "backup", str(tmp_path / "b2")]) == 0
    host.services.store.delete("Patient", "p1")
    host.release()
    host.services.close()

    assert main(["--data-dir", str(data), "restore", str(tmp_path / "b2")]) == 0
    again = make_host(data)
    try:
        assert count(again.services, "Patient", _id="p1") == 1
        assert count(again.services, "Observation", subject="Patient/p1") == 4
    finally:
        again.services.close()
