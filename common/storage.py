"""Private files and SQLite connections for the embedded stores, and what a storage fault means.

The one module of `common/` that touches the file system: the FHIR store, the dead-letter store,
the bus and the send ledger live in four packages and must all create their files the same way
(docs/operations.md, "Files at rest").

- The data directory is created 0700 and every file in it 0600 *whatever the process umask*: the
  mode is set explicitly on creation (`os.open(..., 0o600)` then `fchmod`, since the umask can only
  remove bits from what `open` asks for). SQLite creates a database's `-wal`, `-shm` and
  `-journal` files with the permissions of the database file itself (its unix VFS,
  `findCreateFileMode`), so creating the database file 0600 before SQLite opens it covers them.
- SQLite errors carry no file name ("file is not a database"). Connections made here tag every
  error they raise with the database path, so the CLI can say which file failed (`describe`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_warned: set[str] = set()


# -- modes -------------------------------------------------------------------------------------
def private_dir(path: str | Path) -> Path:
    """Create `path` (and missing parents) with mode 0700. An existing directory keeps its mode
    (an operator may share it with a group on purpose) but a looser one is reported once."""
    path = Path(path)
    if not path.is_dir():
        try:
            path.mkdir(parents=True, mode=PRIVATE_DIR)
        except FileExistsError:
            pass  # created by another process at the same moment
        else:
            os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
            return path
    warn_if_loose(path)
    return path


def warn_if_loose(path: str | Path) -> bool:
    """Log one warning (per directory and process) if others may read or enter `path`."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    if not mode & 0o077:
        return False
    key = str(path.resolve())
    if key not in _warned:
        _warned.add(key)
        # The path and mode only: the directory name is the operator's, not a patient's.
        log.warning("directory %s has mode %04o: other users can read the health data in it; "
                    "run 'chmod 700 %s'", path, mode, path)
    return True


def private_file(path: str | Path) -> Path:
    """Make sure `path` exists with mode 0600 (an existing file Vigil made looser is tightened, and
    so are SQLite's side files next to it)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        for candidate in (path, *(Path(f"{path}{s}") for s in SQLITE_SIDE_FILES)):
            _tighten(candidate)
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def _tighten(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700 or PRIVATE_FILE)
    except FileNotFoundError:
        pass
    except PermissionError:
        pass  # not ours to change; the directory mode still protects it


def write_private(path: Path, data: bytes) -> None:
    """Write a new file with mode 0600 (it must not exist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def replace_private(path: str | Path, data: bytes) -> None:
    """Write `path` (new or existing) with mode 0600: a private temp file renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_private(tmp, data)
    os.replace(tmp, path)


# -- SQLite connections that name their file in errors -------------------------------------------
def tag_error(exc: sqlite3.Error, path: str) -> sqlite3.Error:
    if getattr(exc, "vigil_path", None) is None:
        exc.vigil_path = path  # type: ignore[attr-defined]
        exc.add_note(f"database file: {path}")
    return exc


class _Cursor(sqlite3.Cursor):
    def _path(self) -> str:
        return getattr(self.connection, "vigil_path", "?")

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _Cursor:
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise

    def fetchmany(self, size: int | None = None) -> list[Any]:
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as exc:
            tag_error(exc, self._path())
            raise


class TaggedConnection(sqlite3.Connection):
    """A connection whose errors carry `vigil_path` (and a note naming the file)."""

    vigil_path: str = "?"

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, script: str, /) -> Any:
        try:
            return super().executescript(script)
        except sqlite3.Error as exc:
            tag_error(exc, self.vigil_path)
            raise

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error as exc:
            tag_error(exc, self.vigil_path)
            raise


def connect(path: str | Path, *, tag_errors: bool = True, **kwargs: Any) -> sqlite3.Connection:
    """`sqlite3.connect` for a store's own file: created 0600 first; errors name the file unless
    `tag_errors` is false (the caller then tags them where they leave it, with `tag_error`)."""
    text = str(path)
    if text != ":memory:" and not text.startswith("file:"):
        # A missing or unwritable directory: SQLite's own error (tagged below) says so.
        with contextlib.suppress(OSError):
            private_file(text)
    try:
        if tag_errors:
            kwargs["factory"] = TaggedConnection
        conn: sqlite3.Connection = sqlite3.connect(text, **kwargs)  # an instance of `factory`, when given
    except sqlite3.Error as exc:
        tag_error(exc, text)
        raise
    if isinstance(conn, TaggedConnection):
        conn.vigil_path = text
    return conn


# -- what a storage fault means to the person who ran the command ------------------------------
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_CANTOPEN = 13, 8, 14
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_PERM = 10, 11, 26, 3
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class StorageFault:
    """A storage failure of Vigil's own files, said the way an operator can act on."""

    kind: str  # full | read-only | corrupt | io
    path: str | None
    what: str
    todo: str

    def line(self, data_dir: str | Path | None = None) -> str:
        where = self.path or (f"a file in {data_dir}" if data_dir else "a data file")
        return f"{where}: {self.what}; {self.todo}"


_ADVICE = {
    "full": ("the disk is full (nothing more could be written)",
             "free space on that file system, then run the command again: what was accepted before "
             "the fault is kept and is processed then"),
    "read-only": ("cannot write (read-only file, directory or file system)",
                  "make the data directory and its files writable by this user, then run the command again"),
    "corrupt": ("is not a readable SQLite database (corrupt or truncated)",
                "stop Vigil, restore that file from a backup or move it aside (a new empty one is "
                "created); the other files of the data directory are not affected"),
    "io": ("the disk reported an I/O error", "check the disk and the file system, then run the command again"),
}


def describe(exc: BaseException) -> StorageFault | None:
    """The storage fault behind `exc` (it may be wrapped, e.g. in the FHIR port's ServerError), or
    None when the failure is something else (a locked database, a bug, a network error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        fault = _one(current)
        if fault is not None:
            return fault
        current = current.__cause__ or current.__context__
    return None


def _one(exc: BaseException) -> StorageFault | None:
    kind: str | None = None
    path: str | None = None
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        text = str(exc).lower()
        if code == _SQLITE_FULL or "disk is full" in text:
            kind = "full"
        elif code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN) or "readonly" in text:
            kind = "read-only"
        elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in text or "malformed" in text:
            kind = "corrupt"
        elif code == _SQLITE_IOERR or "disk i/o error" in text:
            kind = "io"
        path = getattr(exc, "vigil_path", None)
    elif isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _FULL_ERRNOS:
            kind = "full"
        elif exc.errno in _READONLY_ERRNOS and exc.filename is not None:
            kind = "read-only"
        elif exc.errno == errno.EIO:
            kind = "io"
        path = None if exc.filename is None else str(exc.filename)
    if kind is None:
        return None
    what, todo = _ADVICE[kind]
    return StorageFault(kind, path, what, todo)


def find_unreadable_database(data_dir: str | Path) -> str | None:
    """For a corrupt-database error that carries no file name: the first `*.db` in `data_dir` that
    SQLite cannot read, opened read-only so nothing is changed."""
    for db in sorted(Path(data_dir).glob("*.db")):
        try:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            fault = describe(exc)
            if fault is not None and fault.kind == "corrupt":
                return str(db)
        except sqlite3.Error:
            continue
    return None
