"""A loopback HTTP server that serves a `FhirStore` through `fhirstore.rest.handle`.

Used by integration tests to point real FHIR clients (fhirpy, httpx, the HTTP adapter) at the
embedded store. It is the production server (runtime/http_server.py: the ASGI app on hypercorn)
with only the /fhir route, so the facade is tested as `vigil serve` serves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fhirstore.port import FhirStore
from runtime.http_app import HttpApp, Limits, RouteRegistry
from runtime.http_server import HttpServer, add_fhir_route

PREFIX = "/fhir"
MAX_BODY = 32 * 1024 * 1024


@contextmanager
def serve_store(store: FhirStore, token: str | None = None) -> Iterator[str]:
    """Serve `store` on 127.0.0.1 (a free port) and yield its FHIR base URL `http://127.0.0.1:PORT/fhir`.
    With `token`, every request must carry it (`Authorization: Bearer <token>`; 401 otherwise)."""
    registry = RouteRegistry()
    add_fhir_route(registry, store, path=PREFIX, auth="key" if token is not None else "anonymous")
    server = HttpServer(HttpApp(token or "", registry, Limits(max_body_bytes=MAX_BODY)), ("127.0.0.1", 0))
    server.start()
    try:
        yield server.url + PREFIX
    finally:
        server.shutdown()
