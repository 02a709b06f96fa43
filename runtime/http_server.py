"""The local HTTP server: Vigil's ASGI app (runtime/http_app.py) served by hypercorn.

Routes: /api/<route> to the app's HTTP-trigger functions, /fhir to the store's REST facade.
Authentication mirrors Azure: functions with auth level "function" or "admin" need the key (here
the local token) in `x-functions-key`, a `code` query parameter, or `Authorization: Bearer`;
"anonymous" functions do not. /fhir always needs the token.

Why hypercorn, and which limits bound a slow or hostile client: docs/decisions.md
("The local HTTP server").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import azure.functions as func
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.utils import wrap_app

from fhirstore import rest
from fhirstore.errors import operation_outcome
from fhirstore.port import FhirStore
from runtime.event_webhook import add_event_grid_webhook
from runtime.host import LocalHost
from runtime.host_functions import FunctionSpec
from runtime.http_app import ALL_METHODS, Auth, HttpApp, Limits, Request, Response, RouteRegistry, json_error
from runtime.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S = 10.0
HANDLER_THREADS = 32
CONSOLE_FUNCTION = "console"  # triggers/console_http.py: the console on Azure Functions
# The request line and headers together (h11's incomplete-event limit): a client that sends more
# without finishing its headers gets 431/400 and is disconnected.
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerLimits:
    # A connection that has not completed its request headers this long after connecting (or
    # after its previous response) is closed, and so is one whose socket goes silent this long.
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    body: Limits = Limits()


@dataclass(frozen=True)
class Tls:
    """A PEM certificate (chain) and its private key: `vigil serve --tls-cert/--tls-key` serves
    HTTPS only, for use beyond loopback (session cookies are then `Secure`)."""

    certfile: str
    keyfile: str


def build_app(host: LocalHost, token: str, limits: Limits | None = None) -> HttpApp:
    """Vigil's routes on one registry: /fhir, then every HTTP-trigger function under /api."""
    registry = RouteRegistry()
    # Bulk Data $export (runtime/bulk_export.py) ahead of /fhir, whose prefix route would take its paths.
    from runtime.bulk_export import BulkExports

    settings = host.services.settings
    BulkExports(settings.path("bulk-export"), settings.path("fhir.db")).register(registry, fhir_error)
    add_fhir_route(registry, host.services.store)
    add_event_grid_webhook(registry, host)
    for spec in host.http_functions():
        if spec.name == CONSOLE_FUNCTION:
            continue  # the console is served below, never through the function that may trust App Service headers
        add_function_route(registry, host, spec)
    # The care team's console (console/views.py); its pages sign staff in themselves. `vigil serve`
    # never trusts App Service identity headers (any client could send them to a bare server).
    from console.views import add_console_routes

    add_console_routes(registry, host.services, trust_app_service=False)
    return HttpApp(token, registry, limits)


def add_fhir_route(registry: RouteRegistry, store: FhirStore, *, path: str = "/fhir", auth: Auth = "key") -> None:
    """The store's FHIR REST facade (fhirstore/rest.py) under `path`."""

    def fhir(request: Request) -> Response:
        resp = rest.handle(store, request.method, request.route_params.get("rest", ""), request.query,
                           request.headers, request.body, request.base_url + path)
        return Response(resp.status, dict(resp.headers), resp.body)

    registry.add(path, fhir, methods=ALL_METHODS, auth=auth, prefix=True, name="fhir", errors=fhir_error)


def add_function_route(registry: RouteRegistry, host: LocalHost, spec: FunctionSpec) -> None:
    """An HTTP-trigger function of function_app.py, called with the `azure.functions` request the
    Functions host would build, under /api as on Azure."""
    assert spec.route_regex is not None
    regex = re.compile("^/api" + spec.route_regex.pattern.removeprefix("^"))

    def call(request: Request) -> Response:
        req = func.HttpRequest(method=request.method, url=request.url, headers=dict(request.headers),
                               params=request.params, route_params=dict(request.route_params), body=request.body)
        try:
            response = spec.call(**{spec.arg_name: req})
        except Exception as exc:
            host.stats.count(spec.name, ok=False)
            log.warning("http function %s failed: %s", spec.name, type(exc).__name__)
            return json_error(500, "internal error")
        host.stats.count(spec.name, ok=True)
        headers = dict(response.headers.items())
        headers.setdefault("Content-Type", response.mimetype or "text/plain")
        return Response(response.status_code, headers, response.get_body())

    auth: Literal["anonymous", "key"] = "anonymous" if spec.auth_level == "anonymous" else "key"
    registry.add_pattern(regex, call, methods=spec.methods, auth=auth, name=spec.name)


def fhir_error(status: int, message: str) -> Response:
    code = {401: "login", 405: "not-supported", 408: "timeout", 413: "too-costly"}.get(status, "exception")
    body = json.dumps(operation_outcome("error", code, message)).encode()
    headers = {"Content-Type": rest.FHIR_JSON}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(status, headers, body)


def connection_capacity() -> int:
    """How many connections this process can hold open: its file-descriptor limit, raised to the
    hard limit. Hypercorn runs each connection as an asyncio task, not a thread, so descriptors,
    not threads, are what runs out; the idle timeout gives them back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


class HttpServer:
    """Hypercorn serving an ASGI app on its own thread and event loop.

    The socket is bound in the constructor, so `address` is known (port 0 picks a free port)."""

    def __init__(self, app: HttpApp, address: tuple[str, int], limits: ServerLimits | None = None,
                 tls: Tls | None = None) -> None:
        limits = limits or ServerLimits()
        config = Config()
        host, port = address
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if tls is not None:  # hypercorn then serves `bind` with TLS and opens no cleartext socket
            config.certfile, config.keyfile = tls.certfile, tls.keyfile
        config.keep_alive_timeout = limits.idle_timeout_s  # also bounds the wait for a request's headers
        # A silent socket is closed after this long. hypercorn's Config annotates read_timeout `int | None`,
        # too narrow: it only hands the value to asyncio.wait_for (asyncio/tcp_server.py), which takes float
        # seconds, and sub-second timeouts are what the limit tests use.
        config.read_timeout = limits.idle_timeout_s  # type: ignore[assignment]
        config.h11_max_incomplete_size = MAX_HEADER_BYTES
        config.backlog = 1024  # a burst of connects waits in the kernel, not refused
        config.accesslog = None  # request lines carry identifiers and search values: no access log
        config.errorlog = logging.getLogger("hypercorn.error")
        config.include_server_header = False
        config.graceful_timeout = 5.0
        self.app = app
        self.config = config
        self.capacity = connection_capacity()
        self.scheme = "https" if tls is not None else "http"
        self._sockets = config.create_sockets()
        listening = self._sockets.secure_sockets if tls is not None else self._sockets.insecure_sockets
        for sock in listening:
            sock.listen(config.backlog)  # connects from now on wait in the kernel until the loop accepts
        name = listening[0].getsockname()
        self.address: tuple[str, int] = (name[0], name[1])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
        return f"{self.scheme}://{host}:{self.address[1]}"

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; blocks the calling thread."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Handlers run here (runtime/http_app.py); asyncio's default pool is cpu + 4 threads, which a
        # few slow ingest batches would fill ahead of a health check.
        self._loop.set_default_executor(
            ThreadPoolExecutor(max_workers=HANDLER_THREADS, thread_name_prefix="vigil-http")
        )
        self._stop = asyncio.Event()
        self._started.set()
        await worker_serve(wrap_app(self.app, self.config.wsgi_max_body_size, "asgi"), self.config,
                           sockets=self._sockets, shutdown_trigger=self._stop.wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="vigil-http", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def shutdown(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=self.config.graceful_timeout + 5)
        for sock in (*self._sockets.secure_sockets, *self._sockets.insecure_sockets):
            sock.close()


def server_limits(settings: Settings) -> ServerLimits:
    return ServerLimits(idle_timeout_s=settings.http_idle_timeout_s,
                        body=Limits(max_body_bytes=settings.http_max_body_bytes,
                                    body_timeout_s=settings.http_body_timeout_s))


def make_server(host: LocalHost, token: str, address: tuple[str, int],
                limits: ServerLimits | None = None, tls: Tls | None = None) -> HttpServer:
    limits = limits or ServerLimits()
    return HttpServer(build_app(host, token, limits.body), address, limits, tls)


@contextmanager
def running_server(host: LocalHost, token: str, address: tuple[str, int] = ("127.0.0.1", 0),
                   limits: ServerLimits | None = None) -> Iterator[str]:
    """Run the server on a thread; yields its base URL (http://127.0.0.1:PORT)."""
    server = make_server(host, token, address, limits)
    server.start()
    try:
        yield server.url
    finally:
        server.shutdown()
