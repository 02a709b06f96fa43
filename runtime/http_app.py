"""Vigil's HTTP surface as one ASGI application with a small route registry.

The server library (hypercorn, see runtime/http_server.py and docs/decisions.md) parses HTTP:
framing, Content-Length and chunked bodies, header size limits and connection timeouts. This app
routes, authenticates and bounds the body *before* it reads it, then runs the route's handler in a
worker thread (handlers do blocking SQLite and network I/O) so one slow handler never stalls the
event loop that keeps other connections, and health checks, answering.

Adding a route is one call:

    registry.add("/api/health", health, methods=("GET",), auth="anonymous")

Authentication mirrors Azure Functions keys: a route with auth "key" needs the local token in
`x-functions-key`, a `code` query parameter, or `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from common.storage import StorageFault
from common.storage import describe as describe_storage_fault

log = logging.getLogger(__name__)
# How long a client should wait before retrying a request that met a storage fault (Retry-After).
STORAGE_RETRY_AFTER_S = 60

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 60.0
Auth = Literal["anonymous", "key"]


@dataclass(frozen=True)
class Request:
    """One request, its body already read and within the limit."""

    method: str
    path: str  # as sent (still percent-encoded), without the query
    query: str  # the raw query string
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    base_url: str  # scheme://host[:port] the client addressed
    route_params: Mapping[str, str] = field(default_factory=dict)
    client: str = ""  # the peer's address as the server saw it (ASGI scope "client"); "" when unknown

    @property
    def params(self) -> dict[str, str]:
        """Query parameters, the last value of a repeated name winning (as Azure's HttpRequest)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def url(self) -> str:
        return self.base_url + self.path + (f"?{self.query}" if self.query else "")


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Handler = Callable[[Request], Response]
# How a route words its errors (401, 405, 408, 413): JSON by default, OperationOutcome for /fhir.
ErrorBody = Callable[[int, str], Response]


def json_error(status: int, message: str) -> Response:
    return Response(status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode())


def storage_fault_response(errors: ErrorBody, route: str, fault: StorageFault) -> Response:
    """Vigil's own storage failed (full disk, read-only or corrupt file): the server's state, not the
    request's fault, so 503 with Retry-After (RFC 9110 §15.6.4, §10.2.3) tells a gateway or device
    to send it again later; nothing of it was accepted. The log names the file, as the CLI does
    (common/storage.py); the fault's wording holds no request content."""
    log.error("http route %s: storage fault: %s", route, fault.line())
    response = errors(503, f"storage unavailable: {fault.what}; try again later")
    response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_S)
    return response


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    handler: Handler
    methods: frozenset[str]
    auth: Auth = "key"
    errors: ErrorBody = json_error
    max_body_bytes: int | None = None  # None: the app's limit


class RouteRegistry:
    """Routes in registration order; the first whose path matches answers (405 if not its method)."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, path: str, handler: Handler, *, methods: Iterable[str] = ("GET",), auth: Auth = "key",
            name: str | None = None, prefix: bool = False, errors: ErrorBody = json_error,
            max_body_bytes: int | None = None) -> Route:
        """Register `handler` for `path`, a route template ("/api/ack/{token}", "{name?}" optional).
        With `prefix`, the route also answers every path below it; the rest is route param "rest"."""
        pattern = route_pattern(path, prefix=prefix)
        return self.add_pattern(pattern, handler, methods=methods, auth=auth, name=name or path,
                                errors=errors, max_body_bytes=max_body_bytes)

    def add_pattern(self, pattern: re.Pattern[str], handler: Handler, *, methods: Iterable[str], auth: Auth,
                    name: str, errors: ErrorBody = json_error, max_body_bytes: int | None = None) -> Route:
        if auth not in ("anonymous", "key"):
            raise ValueError(f"route {name}: auth must be 'anonymous' or 'key', not {auth!r}")
        route = Route(name, pattern, handler, frozenset(m.upper() for m in methods), auth, errors, max_body_bytes)
        self._routes.append(route)
        return route

    def __iter__(self) -> Any:
        return iter(self._routes)

    def resolve(self, method: str, path: str) -> tuple[Route | None, dict[str, str], Route | None]:
        """(route, route params, a route matching the path only) for a request."""
        path_only = None
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if method in route.methods:
                return route, {k: v for k, v in m.groupdict().items() if v is not None}, None
            path_only = path_only or route
        return None, {}, path_only


def route_pattern(template: str, *, prefix: bool = False) -> re.Pattern[str]:
    """Azure Functions route templates: literal segments, {name}, {name?} and {name:constraint}."""
    pattern = ""
    for segment in template.strip("/").split("/"):
        if not segment:
            continue
        m = re.fullmatch(r"\{(\w+)(?::[^}?]+)?(\?)?\}", segment)
        if m:
            name, optional = m.group(1), m.group(2)
            pattern += f"(?:/(?P<{name}>[^/]+))?" if optional else f"/(?P<{name}>[^/]+)"
        else:
            pattern += "/" + re.escape(segment)
    tail = "(?P<rest>/.*)?" if prefix else "/?"
    return re.compile("^" + pattern + tail + "$")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY
    # How long a client may take to send a body once its headers arrived (a slow-body client
    # holds a connection like a slow-headers one; the server's timeouts bound the headers).
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApp:
    """The ASGI 3 application: `await app(scope, receive, send)`."""

    def __init__(self, token: str, registry: RouteRegistry | None = None, limits: Limits | None = None) -> None:
        self.token = token
        self.routes = registry or RouteRegistry()
        self.limits = limits or Limits()

    async def __call__(self, scope: Mapping[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: no route takes them; the server closes the connection
        response = await self._respond(scope, receive)
        await _send(send, response, head=scope["method"] == "HEAD")

    async def _respond(self, scope: Mapping[str, Any], receive: Callable[[], Any]) -> Response:
        method = scope["method"].upper()
        # The raw path keeps percent-escapes, so a "%2F" inside an id stays inside its segment.
        path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        headers = _headers(scope["headers"])
        route, params, path_only = self.routes.resolve(method, path)
        if route is None:
            if path_only is not None:
                response = path_only.errors(405, f"method {method} not allowed")
                response.headers["Allow"] = ", ".join(sorted(path_only.methods))
                return response
            return json_error(404, "no route for this path")
        # Authenticate and check the declared size before reading a byte of the body.
        if route.auth == "key" and not self._authorized(headers, query):
            return route.errors(401, "missing or wrong key (send the local token as 'Authorization: Bearer')")
        try:
            body = await self._body(headers, receive, route.max_body_bytes or self.limits.max_body_bytes)
        except _Refused as exc:
            return route.errors(exc.status, str(exc))
        except _Disconnected:
            return Response(400)  # nobody is listening; the server drops it
        peer = scope.get("client") or ("", 0)
        request = Request(method, path, query, headers, body, _base_url(scope, headers), params, client=str(peer[0]))
        try:
            return await asyncio.to_thread(route.handler, request)
        except Exception as exc:
            fault = describe_storage_fault(exc)
            if fault is not None:
                return storage_fault_response(route.errors, route.name, fault)
            # The type only: an exception's message can quote what the client sent (PHI).
            log.warning("http route %s failed: %s", route.name, type(exc).__name__)
            return route.errors(500, "internal error")

    def _authorized(self, headers: Mapping[str, str], query: str) -> bool:
        supplied = headers.get("x-functions-key") or dict(parse_qsl(query, keep_blank_values=True)).get("code") or ""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            supplied = auth[7:].strip()
        return hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), self.token.encode())

    async def _body(self, headers: Mapping[str, str], receive: Callable[[], Any], limit: int) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            # The server has already refused malformed and conflicting values (400); this is the size.
            if not declared.isdecimal() or not declared.isascii():
                raise _Refused(400, "Content-Length must be a non-negative integer")
            if int(declared) > limit:
                raise _Refused(413, f"request body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:  # a chunked body has no declared size: stop as it passes the limit
                        raise _Refused(413, f"request body over {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise _Refused(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s") from None


class _Disconnected(Exception):
    pass


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _base_url(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 0)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


async def _send(send: Callable[[Any], Any], response: Response, *, head: bool) -> None:
    # HTTP header values are octets (RFC 9110 §5.5); a handler's stray non-Latin-1 character becomes "?".
    headers = [(k.lower().encode("latin-1", "replace"), str(v).encode("latin-1", "replace"))
               for k, v in response.headers.items() if k.lower() != "content-length"]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _lifespan(receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
