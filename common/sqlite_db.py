"""Opening Vigil's SQLite files, one connection per thread, and write transactions.

The FHIR store, the dead-letter store, the local bus and the send ledger each keep one SQLite file
and must open it the same way (docs/operations.md, "Files at rest"):

- the file is created 0600 before SQLite opens it (`common.storage.connect`), and errors name it;
- write-ahead logging (https://sqlite.org/wal.html) so readers never block the writer and several
  processes share the file, with a busy timeout so a writer waits for the lock instead of failing;
  `synchronous` is the file's choice (NORMAL: a commit survives a crashed process; FULL: also a
  power cut, https://sqlite.org/pragma.html#pragma_synchronous);
- the schema version is checked and migrated on open (`common.sqlite_schema.migrate`);
- writes run in `BEGIN IMMEDIATE` transactions (`transaction`): a writer takes the lock when it
  starts and queues behind the busy timeout, instead of failing at its first write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from common.sqlite_schema import Schema, migrate
from common.storage import connect, tag_error

Synchronous = Literal["NORMAL", "FULL"]
BUSY_TIMEOUT_S = 30.0


class WriteLockWaits:
    """This process's time in `BEGIN IMMEDIATE`, where a writer waits for SQLite's one write lock
    (https://sqlite.org/lang_transaction.html): what several worker processes on one file pay for
    sharing it (bench/pipeline.py prints it per reading). Two clock reads per write transaction."""

    waited_s: float = 0.0
    transactions: int = 0


WRITE_LOCK = WriteLockWaits()


def open_database(
    path: str | Path,
    *,
    synchronous: Synchronous = "NORMAL",
    pragmas: Sequence[str] = (),
    tag_errors: bool = True,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
    **connect_kwargs: Any,
) -> sqlite3.Connection:
    """A private, autocommit-mode (`isolation_level=None`) connection to `path` in WAL mode.

    `pragmas` are further `PRAGMA` statements of this file (e.g. "secure_delete = FAST"). With
    `tag_errors` false the connection is a plain `sqlite3.Connection` (a hot path: the caller tags
    errors where they leave it, `common.storage.tag_error`)."""
    text = str(path)
    conn = connect(text, tag_errors=tag_errors, timeout=busy_timeout_s, isolation_level=None,
                   check_same_thread=False, **connect_kwargs)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        enable_wal(conn)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as exc:
        tag_error(exc, text)
        conn.close()
        raise
    return conn


def enable_wal(conn: sqlite3.Connection, attempts: int = 100,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Switching a file to WAL needs a moment alone with it; SQLite answers "locked" at once
    (without its busy timeout) when another connection opens it at the same instant, so try again,
    every 20 ms, up to `attempts` times; any other error, or the last "locked", goes up as it came."""
    retrying = Retrying(
        retry=retry_if_exception(_locked),
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(0.02),
        sleep=sleep,
        reraise=True,
    )
    retrying(conn.execute, "PRAGMA journal_mode = WAL")


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT` on an autocommit-mode connection; any exception rolls back.

    A failed COMMIT is rolled back too (SQLite may leave the transaction open after, e.g., a full
    disk) and re-raised. Some errors roll back by themselves, hence the `in_transaction` checks."""
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    WRITE_LOCK.waited_s += time.perf_counter() - started
    WRITE_LOCK.transactions += 1
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class _Handle:
    """Holds one thread's connection; when the thread ends it drops this and the connection closes."""

    __slots__ = ("db", "pid", "generation", "__weakref__")

    def __init__(self, db: sqlite3.Connection, generation: int) -> None:
        self.db = db
        self.pid = os.getpid()
        self.generation = generation


class ThreadConnections:
    """One connection per thread to one SQLite file, opened by `open_database` with these options;
    the first one (made here) checks and migrates the file's schema.

    After a fork, the parent's connections are never used (nor closed) in the child: the child
    opens its own. `close` closes every connection this process opened; a thread that uses the file
    afterwards opens a new one."""

    def __init__(self, path: str | Path, schema: Schema | None, *, synchronous: Synchronous = "NORMAL",
                 pragmas: Sequence[str] = (), tag_errors: bool = True, **connect_kwargs: Any) -> None:
        self.path = str(path)
        self._options: dict[str, Any] = {"synchronous": synchronous, "pragmas": tuple(pragmas),
                                         "tag_errors": tag_errors, **connect_kwargs}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closers: list[tuple[int, weakref.finalize[Any, Any]]] = []
        self._generation = 0
        if schema is not None:
            migrate(self.get(), schema, self.path)

    def get(self) -> sqlite3.Connection:
        """This thread's connection."""
        handle = getattr(self._local, "handle", None)
        if handle is not None and handle.pid == os.getpid() and handle.generation == self._generation:
            db: sqlite3.Connection = handle.db
            return db
        db = open_database(self.path, **self._options)
        handle = _Handle(db, self._generation)
        closer = weakref.finalize(handle, db.close)
        with self._lock:
            self._closers = [(p, c) for p, c in self._closers if c.alive]
            self._closers.append((handle.pid, closer))
        self._local.handle = handle
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection (`transaction`)."""
        with transaction(self.get()) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            closers, self._closers = self._closers, []
        for pid, closer in closers:
            if pid == os.getpid():
                closer()
