"""Schema versions for Vigil's SQLite files, migrations at open, and online copies of a live file.

Every SQLite file Vigil writes records its schema version in the database header's `user_version`
(https://sqlite.org/pragma.html#pragma_user_version): an integer SQLite keeps for the application
and never reads itself. A file's `Schema` is an ordered list of steps; step *i* takes a file from
version *i* to *i + 1*, so version 0 is a new, empty file (or one written before versions existed,
which is why the first step of each store is written to accept the tables it already finds).

Opening a file runs the missing steps in one `BEGIN IMMEDIATE` transaction, so two processes opening
the same old file migrate it once, and a failed step leaves the file as it was. A file newer than
this Vigil is refused with both versions named (a downgrade cannot know what the newer tables mean).

`copy_database` uses SQLite's online backup API (`sqlite3.Connection.backup`,
https://sqlite.org/backup.html): a consistent snapshot of a file other connections keep writing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.storage import connect, private_file

Step = str | Callable[[sqlite3.Connection], None]


class SchemaError(RuntimeError):
    """A data file this Vigil cannot use as it is (written by a newer version)."""


@dataclass(frozen=True)
class Schema:
    """The schema of one kind of file: what it is called in messages, and its steps in order."""

    name: str
    steps: Sequence[Step]

    @property
    def version(self) -> int:
        return len(self.steps)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, schema: Schema, path: str | Path) -> int:
    """Bring the file behind `conn` (autocommit mode) to `schema.version`; returns the version it had."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)
        if found > schema.version:
            raise SchemaError(f"{path}: the {schema.name} file has schema version {found}; this Vigil reads "
                              f"versions up to {schema.version} (run the Vigil release that wrote it, or "
                              "restore a backup made by this one)")
        for step in schema.steps[found:]:
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step(conn)
        if found != schema.version:
            # PRAGMA takes no bound parameters; the value is our own integer.
            conn.execute(f"PRAGMA user_version = {int(schema.version)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


def copy_database(source: str | Path, dest: str | Path, *, pages: int = 256) -> int:
    """Copy the SQLite file `source` into `dest` (created 0600, replaced if it exists) with the online
    backup API, `pages` pages at a time so writers to `source` are held up only briefly; returns the
    copy's schema version. `dest` may be open elsewhere: SQLite locks it for the copy."""
    if not Path(source).is_file():
        raise FileNotFoundError(f"no SQLite file at {source}")
    src = connect(source, timeout=30)
    try:
        private_file(dest)
        dst = connect(dest, timeout=30)
        try:
            src.backup(dst, pages=pages)
            return user_version(dst)
        finally:
            dst.close()
    finally:
        src.close()
