"""Staff identity: signed session cookies, and App Service Authentication headers only when trusted."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from console.accounts import StaffAccounts
from console.web import Web
from runtime.http_app import Request


def _request(headers: dict[str, str]) -> Request:
    return Request("GET", "/console/inbox", "", {k.lower(): v for k, v in headers.items()}, b"", "https://vigil.example")


def _principal(roles: list[str]) -> str:
    claims = [{"typ": "roles", "val": r} for r in roles] + [{"typ": "name", "val": "Dr Example"}]
    return base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims, "role_typ": "roles"}).encode()).decode()


@pytest.fixture
def accounts(tmp_path: Path) -> StaffAccounts:
    acc = StaffAccounts(tmp_path / "staff.db")
    acc.add("nurse1", "nurse", "a-long-password", "demo-nurse")
    return acc


def test_the_principal_header_is_ignored_unless_trusted(accounts: StaffAccounts) -> None:
    headers = {"X-MS-CLIENT-PRINCIPAL": _principal(["physician"]), "X-MS-CLIENT-PRINCIPAL-ID": "0000-1111"}
    assert Web(accounts, "k" * 32).staff(_request(headers)) is None
    trusted = Web(accounts, "k" * 32, trust_app_service=True).staff(_request(headers))
    assert trusted is not None and trusted.role == "physician" and trusted.practitioner_id == "entra-0000-1111"
    assert trusted.csrf  # forms still need a token bound to the principal


def test_a_principal_without_a_console_role_is_refused(accounts: StaffAccounts) -> None:
    headers = {"X-MS-CLIENT-PRINCIPAL": _principal(["reader"]), "X-MS-CLIENT-PRINCIPAL-ID": "0000-1111"}
    assert Web(accounts, "k" * 32, trust_app_service=True).staff(_request(headers)) is None


def test_secure_cookie_over_https_and_signed_by_the_key(accounts: StaffAccounts) -> None:
    web = Web(accounts, "k" * 32)
    account = accounts.get("nurse1")
    cookie = web.session_cookie(account, _request({}))
    assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0]
    assert web.staff(_request({"Cookie": value})).practitioner_id == "demo-nurse"
    assert Web(accounts, "another-key" * 3).staff(_request({"Cookie": value})) is None


def test_passwords_are_argon2_hashes(accounts: StaffAccounts) -> None:
    stored = accounts._db.execute("SELECT password_hash FROM staff").fetchone()[0]
    assert stored.startswith("$argon2id$") and "a-long-password" not in stored
    assert accounts.verify("nurse1", "a-long-password") is not None
    assert accounts.verify("nurse1", "wrong-password") is None
    assert accounts.verify("nobody", "a-long-password") is None
