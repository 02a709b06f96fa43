"""Console staff accounts: username, role, the Practitioner they act as, an Argon2id password hash.

Accounts live in `<data dir>/staff.db` (SQLite), not in FHIR: a password hash is a credential, not
part of the clinical record. The Practitioner resource carries the person; the account points at it.
Hashing is argon2-cffi's `PasswordHasher` (RFC 9106 defaults), never a hand-written scheme.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from common.storage import connect as private_sqlite

ROLES = ("nurse", "physician", "care-manager", "admin")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10

_hasher = PasswordHasher()
# Verifying an unknown user against a real hash keeps the answer time the same as for a known one.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


class AccountError(ValueError):
    """A staff account that cannot be created as asked; the message says which field and why."""


@dataclass(frozen=True)
class StaffAccount:
    username: str
    role: str
    practitioner_id: str

    @property
    def actor(self) -> str:
        return f"Practitioner/{self.practitioner_id}"


class StaffAccounts:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # The stores' own connect: the file 0600 before SQLite makes it (its -wal/-shm take its mode)
        # and errors that name it, whatever umask the embedding host runs with (common/storage.py).
        self._db = private_sqlite(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS staff (
            username TEXT PRIMARY KEY, role TEXT NOT NULL, practitioner_id TEXT NOT NULL,
            password_hash TEXT NOT NULL, created_at REAL NOT NULL)""")

    def add(self, username: str, role: str, password: str, practitioner_id: str | None = None) -> StaffAccount:
        username = username.strip().lower()
        if not USERNAME.match(username):
            raise AccountError(f"username {username!r}: use 2-64 lower-case letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        practitioner_id = practitioner_id or f"staff-{username.replace('.', '-').replace('_', '-')}"
        if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", practitioner_id):
            raise AccountError(f"practitioner id {practitioner_id!r}: FHIR ids are 1-64 of A-Z a-z 0-9 - .")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO staff VALUES (?, ?, ?, ?, ?)",
                             (username, role, practitioner_id, _hasher.hash(password), time.time()))
        return StaffAccount(username, role, practitioner_id)

    def get(self, username: str) -> StaffAccount | None:
        with self._lock:
            row = self._db.execute("SELECT username, role, practitioner_id FROM staff WHERE username = ?",
                                   (username.strip().lower(),)).fetchone()
        return StaffAccount(*row) if row else None

    def list(self) -> list[StaffAccount]:
        with self._lock:
            rows = self._db.execute("SELECT username, role, practitioner_id FROM staff ORDER BY username").fetchall()
        return [StaffAccount(*r) for r in rows]

    def verify(self, username: str, password: str) -> StaffAccount | None:
        """The account if the password matches, else None (same work either way)."""
        with self._lock:
            row = self._db.execute(
                "SELECT username, role, practitioner_id, password_hash FROM staff WHERE username = ?",
                (username.strip().lower(),),
            ).fetchone()
        stored = row[3] if row else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if _hasher.check_needs_rehash(stored):
            with self._lock:
                self._db.execute("UPDATE staff SET password_hash = ? WHERE username = ?",
                                 (_hasher.hash(password), row[0]))
        return StaffAccount(row[0], row[1], row[2])

    def close(self) -> None:
        self._db.close()


class LoginLimiter:
    """At most `attempts` failed logins per username and per client address in `window_s`
    (OWASP ASVS v4 §2.2.1: anti-automation on authentication)."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.attempts for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)
