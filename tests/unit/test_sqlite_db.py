"""The one way Vigil opens its SQLite files (common/sqlite_db.py), on real files."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from common.sqlite_db import ThreadConnections, enable_wal, open_database, transaction
from common.sqlite_schema import Schema, SchemaError, user_version

SCHEMA = Schema("test", ["CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_private_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        conn = open_database(tmp_path / "x.db", synchronous="FULL", pragmas=["secure_delete = FAST"])
    finally:
        os.umask(old)
    try:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
        assert conn.isolation_level is None  # autocommit: transactions are explicit
        assert _mode(tmp_path / "x.db") == 0o600
        assert _mode(tmp_path / "x.db-wal") == 0o600
    finally:
        conn.close()


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        open_database(bad)
    assert getattr(caught.value, "vigil_path", None) == str(bad)


def test_transaction_commits_or_rolls_back_everything(tmp_path: Path) -> None:
    files = ThreadConnections(tmp_path / "x.db", SCHEMA)
    try:
        with files.transaction() as conn:
            conn.execute("INSERT INTO t VALUES ('a', 1)")
        with pytest.raises(RuntimeError), files.transaction() as conn:
            conn.execute("INSERT INTO t VALUES ('b', 2)")
            raise RuntimeError("boom")
        with pytest.raises(sqlite3.IntegrityError), transaction(files.get()) as conn:
            conn.execute("INSERT INTO t VALUES ('c', 3)")
            conn.execute("INSERT INTO t VALUES ('a', 4)")  # duplicate key: the whole transaction goes
        assert files.get().execute("SELECT k, v FROM t").fetchall() == [("a", 1)]
        assert not files.get().in_transaction
    finally:
        files.close()


def test_the_schema_is_migrated_once_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    ThreadConnections(path, SCHEMA).close()
    conn = sqlite3.connect(path)
    assert user_version(conn) == 1
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(SchemaError, match="schema version 7"):
        ThreadConnections(path, SCHEMA)


def test_each_thread_has_its_own_connection_and_close_closes_them_all(tmp_path: Path) -> None:
    files = ThreadConnections(tmp_path / "x.db", SCHEMA)
    mine = files.get()
    assert files.get() is mine
    theirs: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: theirs.append(files.get()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    files.close()
    with pytest.raises(sqlite3.ProgrammingError):
        theirs[0].execute("SELECT 1")  # the other thread's connection is closed too
    # The file stays usable: a thread that needs it again opens a new connection.
    assert files.get() is not mine
    assert files.get().execute("SELECT count(*) FROM t").fetchone() == (0,)
    files.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    files = ThreadConnections(tmp_path / "x.db", SCHEMA)
    parent = files.get()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never the parent's connection
        ok = files.get() is not parent
        with files.transaction() as conn:
            conn.execute("INSERT INTO t VALUES ('child', 1)")
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert parent.execute("SELECT k FROM t").fetchall() == [("child",)]
    files.close()


# -- switching to WAL while another connection holds the file (retried with tenacity) ---------------


def _held(path: Path) -> sqlite3.Connection:
    """A connection holding an exclusive lock on a rollback-journal file: a switch to WAL answers "locked"."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (v)")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_enable_wal_tries_again_every_20_ms_until_the_lock_is_released(tmp_path: Path) -> None:
    holder = _held(tmp_path / "x.db")
    conn = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            holder.execute("COMMIT")

    try:
        enable_wal(conn, sleep=sleep)
        assert waits == [0.02] * 3
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
        holder.close()


def test_enable_wal_gives_up_after_its_attempts_with_sqlites_error(tmp_path: Path) -> None:
    holder = _held(tmp_path / "x.db")
    conn = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    waits: list[float] = []
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            enable_wal(conn, attempts=4, sleep=waits.append)
        assert len(waits) == 3  # four attempts, three waits between them
    finally:
        conn.close()
        holder.close()


def test_enable_wal_does_not_retry_other_errors() -> None:
    class Failing:
        calls = 0

        def execute(self, sql: str) -> None:
            self.calls += 1
            raise sqlite3.OperationalError("disk I/O error")

    failing, waits = Failing(), list[float]()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        enable_wal(failing, sleep=waits.append)  # only `execute` is called
    assert (failing.calls, waits) == (1, [])
