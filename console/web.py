"""The console's plumbing on the ASGI app's route registry: sessions, CSRF, roles, rendering.

- Local staff sign in with a password (console/accounts.py). The session is a cookie signed with
  itsdangerous (`URLSafeTimedSerializer`, key from VIGIL_CONSOLE_SECRET or a per-data-dir secret),
  HttpOnly, SameSite=Strict, Secure when the request came over TLS, 8 hours.
- Behind Azure App Service Authentication the signed-in user arrives in `X-MS-CLIENT-PRINCIPAL`
  (learn.microsoft.com/azure/app-service/configure-authentication-user-identities). The header is
  trusted only when the console is built with `trust_app_service=True` (setting
  VIGIL_CONSOLE_IDENTITY=app-service on Azure); `vigil serve` never builds it so, since any client
  could send the header to a bare server.
- Every POST carries the session's CSRF token (OWASP CSRF cheat sheet: synchronizer token). The
  sign-in form, before any session, carries a token signed over a random value in a short-lived
  `Path=/console/login` cookie (the cheat sheet's "login CSRF": a forged sign-in would put staff in
  an attacker's session).
- Pages are Jinja2 with autoescape; responses carry a CSP that allows only same-origin scripts.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape

from console.accounts import ROLES, LoginLimiter, StaffAccount, StaffAccounts
from runtime.http_app import Request, Response

log = logging.getLogger(__name__)

PREFIX = "/console"
COOKIE = "vigil_console"
LOGIN_COOKIE = "vigil_console_login"
SESSION_MAX_AGE_S = 8 * 3600
LOGIN_FORM_MAX_AGE_S = 3600
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Staff:
    username: str
    role: str
    practitioner_id: str
    csrf: str

    @property
    def actor(self) -> str:
        return f"Practitioner/{self.practitioner_id}"


@dataclass
class Ctx:
    """One console request: the request, the signed-in staff member, the parsed form."""

    request: Request
    staff: Staff
    form: dict[str, list[str]]

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[-1].strip() if values else default

    def query(self, name: str, default: str = "") -> str:
        return self.request.params.get(name, default)


View = Callable[[Ctx], Response]


class Web:
    def __init__(self, accounts: StaffAccounts, secret: str, *, trust_app_service: bool = False,
                 prefix: str = PREFIX) -> None:
        self.prefix = prefix.rstrip("/")
        self.accounts = accounts
        self.signer = URLSafeTimedSerializer(secret, salt="vigil-console-session")
        self.limiter = LoginLimiter()
        # Per client address: many usernames tried from one place (password spraying) are slowed
        # too, with room for a clinic whose staff sign in from behind one address.
        self.address_limiter = LoginLimiter(attempts=20)
        self.trust_app_service = trust_app_service
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
        self.env.globals["prefix"] = self.prefix

    # -- responses ---------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, staff: Staff | None = None, **ctx: Any) -> Response:
        body = self.env.get_template(template).render(staff=staff, **ctx).encode()
        return Response(status, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}, body)

    @staticmethod
    def redirect(to: str, cookie: str | None = None) -> Response:
        headers = {"Location": to, **SECURITY_HEADERS}
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        return Response(303, headers)

    @staticmethod
    def text(status: int, message: str, content_type: str = "text/plain; charset=utf-8") -> Response:
        return Response(status, {"Content-Type": content_type, **SECURITY_HEADERS}, message.encode())

    # -- sessions ----------------------------------------------------------------------------
    def session_cookie(self, account: StaffAccount, request: Request) -> str:
        value = self.signer.dumps({"u": account.username, "r": account.role, "p": account.practitioner_id,
                                   "c": secrets.token_urlsafe(24)})
        secure = "; Secure" if request.base_url.startswith("https://") else ""
        return f"{COOKIE}={value}; Path={self.prefix}; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_S}{secure}"

    def login_form(self, request: Request) -> tuple[str, str]:
        """(the form's CSRF token, the Set-Cookie that pairs with it) for a sign-in page."""
        nonce = _cookie(request.headers.get("cookie", ""), LOGIN_COOKIE) or secrets.token_urlsafe(24)
        secure = "; Secure" if request.base_url.startswith("https://") else ""
        cookie = (f"{LOGIN_COOKIE}={nonce}; Path={self.prefix}/login; HttpOnly; SameSite=Strict; "
                  f"Max-Age={LOGIN_FORM_MAX_AGE_S}{secure}")
        return self.signer.dumps(nonce, salt="login-csrf"), cookie

    def login_csrf_ok(self, request: Request, sent: str) -> bool:
        nonce = _cookie(request.headers.get("cookie", ""), LOGIN_COOKIE)
        if not nonce or not sent:
            return False
        try:
            signed = self.signer.loads(sent, salt="login-csrf", max_age=LOGIN_FORM_MAX_AGE_S)
        except BadSignature:
            return False
        return hmac.compare_digest(str(signed).encode(), nonce.encode())

    def clear_cookie(self) -> str:
        return f"{COOKIE}=; Path={self.prefix}; HttpOnly; SameSite=Strict; Max-Age=0"

    def staff(self, request: Request) -> Staff | None:
        if self.trust_app_service and "x-ms-client-principal" in request.headers:
            return self._app_service_staff(request)
        raw = _cookie(request.headers.get("cookie", ""), COOKIE)
        if not raw:
            return None
        try:
            data = self.signer.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        account = self.accounts.get(data.get("u", ""))
        if account is None:  # removed since the session began
            return None
        return Staff(account.username, account.role, account.practitioner_id, str(data.get("c", "")))

    def _app_service_staff(self, request: Request) -> Staff | None:
        try:
            principal = json.loads(base64.b64decode(request.headers["x-ms-client-principal"]))
        except (ValueError, TypeError):
            return None
        claims = {c.get("typ"): c.get("val") for c in principal.get("claims") or [] if isinstance(c, dict)}
        role_typ = principal.get("role_typ", "roles")
        roles = [
            c.get("val")
            for c in principal.get("claims") or []
            if isinstance(c, dict) and c.get("typ") in (role_typ, "roles")
        ]
        role = next((r for r in roles if r in ROLES), None)
        oid = request.headers.get("x-ms-client-principal-id") or claims.get(
            "http://schemas.microsoft.com/identity/claims/objectidentifier", "")
        if not role or not oid:
            return None
        # The CSRF token is bound to the principal, signed with the console key (no server state).
        csrf = self.signer.dumps(oid, salt="csrf")[-32:]
        name = request.headers.get("x-ms-client-principal-name", oid)
        return Staff(name, role, f"entra-{oid}"[:64], csrf)

    # -- the route wrapper -------------------------------------------------------------------
    def page(self, view: View, *, roles: tuple[str, ...] = ROLES) -> Callable[[Request], Response]:
        def handle(request: Request) -> Response:
            staff = self.staff(request)
            if staff is None:
                if request.method == "GET":
                    return self.redirect(f"{self.prefix}/login")
                return self.text(401, "sign in first")
            if staff.role not in roles:
                return self.text(403, f"your role ({staff.role}) cannot do this")
            form: dict[str, list[str]] = {}
            if request.method == "POST":
                form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
                sent = (form.get("csrf") or [request.headers.get("x-csrf-token", "")])[-1]
                if not staff.csrf or not hmac.compare_digest(sent.encode(), staff.csrf.encode()):
                    return self.text(403, "missing or wrong CSRF token: reload the page and try again")
            return view(Ctx(request, staff, form))
        return handle


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None

