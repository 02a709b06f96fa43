"""A local stand-in for Azure Communication Services (SMS, Email) and an Event Grid topic.

HTTPS on 127.0.0.1 with a certificate from a throwaway `trustme` CA; clients trust it through
`connection_verify=server.ca_path`. It checks what the real service checks before doing anything:

- ACS requests carry the HMAC-SHA256 signature the SDK computes (string to sign:
  `VERB\\npath?query\\n<x-ms-date>;<host>;<x-ms-content-sha256>`, key = base64-decoded access key),
  a body hash that matches the body, and a fresh `x-ms-date`; otherwise 401.
- Bodies have the shape of the REST API (api-version 2021-03-07 for SMS, 2025-09-01 for email);
  otherwise 400 with an ACS-style error body.
- Event Grid requests carry the topic key in `aeg-sas-key`; otherwise 401.

It answers like the service: `/sms` 202 with per-recipient results (scripted per-recipient
failures, repeatability ids de-duplicated), `/emails:send` 202 with `Operation-Location` and the
status GET, `/api/events` 200. Whole-request failures (429 with Retry-After, 5xx) can be
scripted. Everything is recorded for assertions.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import re
import secrets
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme

SMS_API_VERSION = "2021-03-07"
EMAIL_API_VERSIONS = frozenset({"2025-09-01", "2024-07-01-preview", "2023-03-31"})
EVENTGRID_API_VERSION = "2018-01-01"
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_SMS_CHARS = 2048


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int
    auth_ok: bool

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Scripted:
    prefix: str
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None
    times: int


@dataclass
class FakeAcsState:
    access_key: str
    eventgrid_key: str
    requests: list[Recorded] = field(default_factory=list)
    sms_messages: list[dict[str, Any]] = field(default_factory=list)  # accepted, one per real send
    emails: list[dict[str, Any]] = field(default_factory=list)  # accepted operations
    events: list[dict[str, Any]] = field(default_factory=list)  # published Event Grid events
    recipient_failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    scripted: list[_Scripted] = field(default_factory=list)
    repeatability: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    email_outcome: dict[str, Any] = field(default_factory=lambda: {"status": "Succeeded"})
    duplicate_operation_status: int = 202
    response_delay_s: float = 0.0


class FakeAcsServer:
    """Use as a context manager; `endpoint`, `connection_string`, `ca_path`, `eventgrid_endpoint`."""

    def __init__(self, *, access_key: str | None = None, eventgrid_key: str | None = None) -> None:
        self.state = FakeAcsState(
            access_key=access_key or base64.b64encode(secrets.token_bytes(32)).decode(),
            eventgrid_key=eventgrid_key or secrets.token_urlsafe(24),
        )
        self.lock = threading.RLock()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-acs-")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = str(Path(self._tmp.name) / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._ssl)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeAcsServer:
        server = self

        class Handler(_Handler):
            fake = server

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.socket = self._ssl.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="fake-acs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._tmp.cleanup()

    def __enter__(self) -> FakeAcsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.state.access_key}"

    @property
    def access_key(self) -> str:
        return self.state.access_key

    @property
    def eventgrid_endpoint(self) -> str:
        return f"{self.endpoint}/api/events"

    @property
    def eventgrid_key(self) -> str:
        return self.state.eventgrid_key

    # -- scripting ---------------------------------------------------------------------------
    def fail_recipient(self, to: str, status: int = 400, error: str = "Invalid To phone number format.") -> None:
        """Every send to `to` gets this per-recipient failure (until `clear_failures`)."""
        with self.lock:
            self.state.recipient_failures[to] = (status, error)

    def fail_next(self, prefix: str, status: int, *, headers: dict[str, str] | None = None,
                  body: dict[str, Any] | None = None, times: int = 1) -> None:
        """The next `times` requests whose path starts with `prefix` get this whole-request answer
        (after authentication, like a throttled or failing service)."""
        with self.lock:
            self.state.scripted.append(_Scripted(prefix, status, headers or {}, body, times))

    def set_email_outcome(self, status: str, error: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.state.email_outcome = {"status": status, **({"error": error} if error else {})}

    def clear_failures(self) -> None:
        with self.lock:
            self.state.recipient_failures.clear()
            self.state.scripted.clear()

    def reset(self) -> None:
        """Forget everything sent and scripted, for the next test on a module-scoped server
        (email operation ids derive from message keys, which repeat across tests)."""
        with self.lock:
            self.state.recipient_failures.clear()
            self.state.scripted.clear()
            self.state.sms_messages.clear()
            self.state.emails.clear()
            self.state.operations.clear()
            self.state.requests.clear()

    # -- assertions --------------------------------------------------------------------------
    @property
    def requests(self) -> list[Recorded]:
        with self.lock:
            return list(self.state.requests)

    @property
    def sms_messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.sms_messages)

    @property
    def emails(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.emails)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.events)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAcsServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK would add
    # ~40 ms to every response, which is the stand-in's artefact, not the service's.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        return

    # -- plumbing ----------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _record(self, body: bytes, status: int, auth_ok: bool) -> None:
        parts = urlsplit(self.path)
        with self.fake.lock:
            self.fake.state.requests.append(
                Recorded(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    status,
                    auth_ok,
                )
            )

    def _respond(self, body: bytes, status: int, payload: Any = None, headers: dict[str, str] | None = None,
                 auth_ok: bool = True) -> None:
        self._record(body, status, auth_ok)
        self._reply(status, payload, headers)

    def _check_hmac(self, body: bytes) -> str | None:
        """None if the request is signed like the ACS SDK signs it, else why not."""
        date = self.headers.get("x-ms-date")
        content_hash = self.headers.get("x-ms-content-sha256")
        auth = self.headers.get("Authorization", "")
        if not date or not content_hash or not auth:
            return "missing x-ms-date, x-ms-content-sha256 or Authorization"
        expected_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if not hmac.compare_digest(expected_hash, content_hash):
            return "x-ms-content-sha256 does not match the body"
        try:
            sent = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return "x-ms-date is not an HTTP date"
        if abs(datetime.now(UTC) - sent) > timedelta(minutes=15):
            return "x-ms-date is too far from now"
        match = re.fullmatch(r"HMAC-SHA256 SignedHeaders=([^&]+)&Signature=(.+)", auth)
        if not match or match.group(1).lower() != "x-ms-date;host;x-ms-content-sha256":
            return "Authorization is not HMAC-SHA256 over x-ms-date;host;x-ms-content-sha256"
        host = self.headers.get("Host", "")
        to_sign = f"{self.command}\n{self.path}\n{date};{host};{content_hash}"
        key = base64.b64decode(self.fake.state.access_key)
        expected = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, match.group(2)):
            return "signature mismatch"
        return None

    def _scripted(self, path: str) -> _Scripted | None:
        with self.fake.lock:
            for item in self.fake.state.scripted:
                if path.startswith(item.prefix) and item.times > 0:
                    item.times -= 1
                    return item
        return None

    # -- routing -----------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self._body()
        path = urlsplit(self.path).path
        if path == "/api/events":
            return self._eventgrid(body)
        problem = self._check_hmac(body)
        if problem:
            return self._respond(body, 401, _error("Denied", f"Denied by the resource provider. ({problem})"),
                                 auth_ok=False)
        scripted = self._scripted(path)
        if scripted:
            return self._respond(body, scripted.status, scripted.body or _error("Scripted", "scripted failure"),
                                 scripted.headers)
        if path == "/sms":
            return self._sms(body)
        if path == "/emails:send":
            return self._email_send(body)
        self._respond(body, 404, _error("NotFound", "no such route"))

    def do_GET(self) -> None:  # noqa: N802
        body = self._body()
        path = urlsplit(self.path).path
        problem = self._check_hmac(body)
        if problem:
            return self._respond(body, 401, _error("Denied", f"Denied by the resource provider. ({problem})"),
                                 auth_ok=False)
        match = re.fullmatch(r"/emails/operations/([^/]+)", path)
        if not match:
            return self._respond(body, 404, _error("NotFound", "no such route"))
        with self.fake.lock:
            operation = self.fake.state.operations.get(match.group(1))
        if operation is None:
            return self._respond(body, 404, _error("NotFound", "unknown operation"))
        self._respond(body, 200, operation["result"])

    # -- SMS ---------------------------------------------------------------------------------
    def _sms(self, body: bytes) -> None:
        query = parse_qs(urlsplit(self.path).query)
        if query.get("api-version") != [SMS_API_VERSION]:
            return self._respond(body, 400, _error("BadRequest", "unsupported api-version"))
        try:
            request = json.loads(body)
        except ValueError:
            return self._respond(body, 400, _error("BadRequest", "body is not JSON"))
        problem = _sms_shape_problem(request)
        if problem:
            return self._respond(body, 400, _error("BadRequest", problem))
        results = []
        with self.fake.lock:
            state = self.fake.state
            for recipient in request["smsRecipients"]:
                rid = recipient["repeatabilityRequestId"]
                if rid in state.repeatability:
                    results.append(state.repeatability[rid])  # the service answers a repeat the same way
                    continue
                failure = state.recipient_failures.get(recipient["to"])
                if failure:
                    item = {"to": recipient["to"], "httpStatusCode": failure[0], "successful": False,
                            "errorMessage": failure[1], "repeatabilityResult": "accepted"}
                else:
                    item = {"to": recipient["to"], "messageId": f"Outgoing_{uuid.uuid4()}_noam",
                            "httpStatusCode": 202, "successful": True, "repeatabilityResult": "accepted"}
                    options = request.get("smsSendOptions") or {}
                    state.sms_messages.append({
                        "from": request["from"], "to": recipient["to"], "message": request["message"],
                        "messageId": item["messageId"], "tag": options.get("tag"),
                        "enableDeliveryReport": options.get("enableDeliveryReport"),
                        "repeatabilityRequestId": rid,
                    })
                state.repeatability[rid] = item
                results.append(item)
        self._respond(body, 202, {"value": results})

    # -- Email -------------------------------------------------------------------------------
    def _email_send(self, body: bytes) -> None:
        query = parse_qs(urlsplit(self.path).query)
        version = (query.get("api-version") or [""])[0]
        if version not in EMAIL_API_VERSIONS:
            return self._respond(body, 400, _error("BadRequest", "unsupported api-version"))
        try:
            message = json.loads(body)
        except ValueError:
            return self._respond(body, 400, _error("BadRequest", "body is not JSON"))
        problem = _email_shape_problem(message)
        if problem:
            return self._respond(body, 400, _error("BadRequest", problem))
        operation_id = self.headers.get("Operation-Id") or str(uuid.uuid4())
        try:
            uuid.UUID(operation_id)
        except ValueError:
            return self._respond(body, 400, _error("BadRequest", "Operation-Id must be a GUID"))
        location = f"{self.fake.endpoint}/emails/operations/{operation_id}?api-version={version}"
        headers = {"Operation-Location": location, "Retry-After": "0"}
        with self.fake.lock:
            state = self.fake.state
            if operation_id in state.operations:
                status = state.duplicate_operation_status
                if status != 202:
                    self._record(body, status, True)
                    self._reply(status, _error("Conflict", "An operation with this Operation-Id already exists."))
                    return
                existing = state.operations[operation_id]
                self._record(body, 202, True)
                self._reply(202, {"id": operation_id, "status": "Running"}, headers)
                existing["resubmissions"] += 1
                return
            result = {"id": operation_id, **state.email_outcome}
            state.operations[operation_id] = {"message": message, "result": result, "resubmissions": 0}
            if result["status"] == "Succeeded":
                state.emails.append({"operation_id": operation_id, "message": message})
        self._respond(body, 202, {"id": operation_id, "status": "Running"}, headers)

    # -- Event Grid --------------------------------------------------------------------------
    def _eventgrid(self, body: bytes) -> None:
        key = self.headers.get("aeg-sas-key")
        if not key or not hmac.compare_digest(key, self.fake.state.eventgrid_key):
            return self._respond(body, 401, _error("Unauthorized", "The request authorization key is not authorized"),
                                 auth_ok=False)
        scripted = self._scripted("/api/events")
        if scripted:
            return self._respond(body, scripted.status, scripted.body or _error("Scripted", "scripted failure"),
                                 scripted.headers)
        query = parse_qs(urlsplit(self.path).query)
        if query.get("api-version") != [EVENTGRID_API_VERSION]:
            return self._respond(body, 400, _error("BadRequest", "unsupported api-version"))
        try:
            events = json.loads(body)
        except ValueError:
            return self._respond(body, 400, _error("BadRequest", "body is not JSON"))
        if not isinstance(events, list) or not events:
            return self._respond(body, 400, _error("BadRequest", "expected a JSON array of events"))
        for index, event in enumerate(events):
            missing = [k for k in ("id", "subject", "eventType", "eventTime", "data", "dataVersion")
                       if k not in event or event[k] in (None, "")]
            if missing:
                return self._respond(body, 400, _error("BadRequest", f"event {index}: missing {', '.join(missing)}"))
        with self.fake.lock:
            self.fake.state.events.extend(events)
        self._respond(body, 200)


def _sms_shape_problem(request: Any) -> str | None:
    if not isinstance(request, dict):
        return "body must be an object"
    if not isinstance(request.get("from"), str) or not _E164.match(request["from"]):
        return "from must be an E.164 phone number"
    recipients = request.get("smsRecipients")
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= 100:
        return "smsRecipients must hold 1 to 100 recipients"
    for r in recipients:
        if not isinstance(r, dict) or not isinstance(r.get("to"), str) or not _E164.match(r["to"]):
            return "smsRecipients[].to must be an E.164 phone number"
        try:
            uuid.UUID(str(r.get("repeatabilityRequestId")))
            email.utils.parsedate_to_datetime(str(r.get("repeatabilityFirstSent")))
        except (TypeError, ValueError):
            return "smsRecipients[] needs repeatabilityRequestId (GUID) and repeatabilityFirstSent (HTTP date)"
    message = request.get("message")
    if not isinstance(message, str) or not message or len(message) > MAX_SMS_CHARS:
        return f"message must be 1 to {MAX_SMS_CHARS} characters"
    options = request.get("smsSendOptions")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("enableDeliveryReport"), bool):
            return "smsSendOptions.enableDeliveryReport must be a boolean"
        if "tag" in options and options["tag"] is not None and not isinstance(options["tag"], str):
            return "smsSendOptions.tag must be a string"
    unknown = set(request) - {"from", "smsRecipients", "message", "smsSendOptions"}
    if unknown:
        return f"unknown fields: {', '.join(sorted(unknown))}"
    return None


def _email_shape_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "body must be an object"
    known = {"senderAddress", "recipients", "content", "attachments", "replyTo", "headers",
             "userEngagementTrackingDisabled"}
    unknown = set(message) - known
    if unknown:
        return f"unknown fields: {', '.join(sorted(unknown))}"
    if not isinstance(message.get("senderAddress"), str) or not _EMAIL.match(message["senderAddress"]):
        return "senderAddress must be an email address"
    recipients = message.get("recipients")
    if not isinstance(recipients, dict) or not recipients.get("to"):
        return "recipients.to must hold at least one recipient"
    for kind in ("to", "cc", "bcc"):
        for r in recipients.get(kind) or []:
            if not isinstance(r, dict) or not isinstance(r.get("address"), str) or not _EMAIL.match(r["address"]):
                return f"recipients.{kind}[].address must be an email address"
    content = message.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("subject"), str) or not content["subject"]:
        return "content.subject is required"
    if not (content.get("plainText") or content.get("html")):
        return "content needs plainText or html"
    tracking = message.get("userEngagementTrackingDisabled")
    if tracking is not None and not isinstance(tracking, bool):
        return "userEngagementTrackingDisabled must be a boolean"
    return None


def write_channels_config(acs: FakeAcsServer, path: Path, *, email: str = "outbox",
                          delivery_reports: bool = False) -> Path:
    """A channels file for a host whose SMS (and, with email="acs_email", email) goes through the
    real ACS SDKs to `acs`; the rest goes to the file outbox. SDK retries are off: Vigil's own
    retry policy is what the tests check."""
    sms: dict[str, Any] = {"type": "acs_sms", "connection_string": acs.connection_string, "from": "+18005550100",
                           "connection_verify": acs.ca_path, "retry_total": 0}
    if delivery_reports:
        sms["delivery_reports"] = True
    mail: dict[str, Any] = {"type": "outbox", "directory": "outbox"}
    if email == "acs_email":
        mail = {"type": "acs_email", "connection_string": acs.connection_string, "sender": "DoNotReply@mail.example",
                "connection_verify": acs.ca_path, "retry_total": 0, "polling_interval": 0}
    path.write_text(json.dumps({"sms": sms, "email": mail, "outbox": {"type": "outbox", "directory": "outbox"}}))
    return path
