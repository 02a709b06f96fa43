"""What a storage fault means (common/storage.py): which file, what happened, or None when the
failure is something else and must not be reported as one."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from common.storage import connect, describe, private_file
from fhirstore.errors import ServerError


def test_an_error_found_while_reading_rows_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (v)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])
    conn.close()
    data = bytearray(path.read_bytes())
    data[0:16] = b"not sqlite here!"  # the header SQLite checks first
    path.write_bytes(bytes(data))
    with pytest.raises(sqlite3.DatabaseError) as caught:
        connect(path).execute("SELECT * FROM t").fetchall()
    fault = describe(caught.value)
    assert fault is not None and fault.kind == "corrupt" and fault.path == str(path)
    assert f"database file: {path}" in (caught.value.__notes__ or [])


def test_a_fault_wrapped_by_the_fhir_port_is_still_found(tmp_path: Path) -> None:
    conn = connect(tmp_path / "full.db", isolation_level=None)
    conn.execute("CREATE TABLE t (v)")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        try:
            conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,) for _ in range(10)])
        except sqlite3.Error as exc:
            raise ServerError("the embedded FHIR store failed (update)") from exc
    except ServerError as wrapped:
        fault = describe(wrapped)
    assert fault is not None and fault.kind == "full" and fault.path == str(tmp_path / "full.db")
    assert "free space" in fault.line()


@pytest.mark.parametrize(("code", "kind"), [(errno.ENOSPC, "full"), (errno.EROFS, "read-only"),
                                             (errno.EACCES, "read-only"), (errno.EIO, "io")])
def test_plain_file_errors_by_errno(code: int, kind: str) -> None:
    fault = describe(OSError(code, os.strerror(code), "/data/outbox/m.json"))
    assert fault is not None and (fault.kind, fault.path) == (kind, "/data/outbox/m.json")


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("database is locked"),  # busy: retried, not a storage fault
    sqlite3.IntegrityError("UNIQUE constraint failed: t.v"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    ValueError("bad reading"),
])
def test_other_failures_are_not_storage_faults(exc: Exception) -> None:
    assert describe(exc) is None


def test_private_file_is_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        path = private_file(tmp_path / "f.db")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_untagged_corrupt_database_error_is_traced_to_its_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.storage_faults import EXIT_STORAGE_FAULT, report_storage_fault

    good = sqlite3.connect(tmp_path / "fhir.db")
    good.execute("CREATE TABLE t (v)")
    good.close()
    (tmp_path / "sends.db").write_bytes(b"\x01" * 4096)
    assert report_storage_fault(sqlite3.DatabaseError("file is not a database"), tmp_path) == EXIT_STORAGE_FAULT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sends.db: is not a readable SQLite database" in err
    assert report_storage_fault(ValueError("not storage"), tmp_path) is None
