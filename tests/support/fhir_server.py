"""A loopback HTTP server that serves a `FhirStore` through `fhirstore.rest.handle`.

Used by integration tests to point real FHIR clients (fhirpy, httpx, the HTTP adapter) at the
embedded store. It is the production server (runtime/http_server.py: the ASGI app on hypercorn)
with only the /fhir route, so the facade is tested as `vigil serve` serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl

from fhirstore import rest
from fhirstore.port import FhirStore
from runtime.http_app import ALL_METHODS, HttpApp, Limits, Request, Response, RouteRegistry
from runtime.http_server import HttpServer, add_fhir_route, fhir_error

PREFIX = "/fhir"
MAX_BODY = 32 * 1024 * 1024


@contextmanager
def serve_store(store: FhirStore, token: str | None = None, *,
                unknown_params: dict[str, set[str]] | None = None) -> Iterator[str]:
    """Serve `store` on 127.0.0.1 (a free port) and yield its FHIR base URL `http://127.0.0.1:PORT/fhir`.
    With `token`, every request must carry it (`Authorization: Bearer <token>`; 401 otherwise).

    `unknown_params` (type -> parameter codes) makes it a server that does not know those search
    parameters, the way Medplum treats one: `/metadata` does not list them, and a search that uses
    one (with or without a modifier) answers an empty searchset Bundle instead of an error."""
    registry = RouteRegistry()
    auth = "key" if token is not None else "anonymous"
    if unknown_params:
        _add_forgetful_fhir_route(registry, store, unknown_params, auth=auth)
    else:
        add_fhir_route(registry, store, path=PREFIX, auth=auth)
    server = HttpServer(HttpApp(token or "", registry, Limits(max_body_bytes=MAX_BODY)), ("127.0.0.1", 0))
    server.start()
    try:
        yield server.url + PREFIX
    finally:
        server.shutdown()


def _add_forgetful_fhir_route(registry: RouteRegistry, store: FhirStore, unknown: dict[str, set[str]],
                              *, auth: str) -> None:
    def fhir(request: Request) -> Response:
        path = request.route_params.get("rest", "")
        if request.method == "GET" and _uses_unknown(path, request.query, unknown):
            empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
            return Response(200, {"Content-Type": rest.FHIR_JSON}, json.dumps(empty).encode())
        resp = rest.handle(store, request.method, path, request.query, request.headers, request.body,
                           request.base_url + PREFIX)
        body = resp.body
        if request.method == "GET" and path.strip("/") == "metadata" and resp.status == 200:
            body = _without_params(body, unknown)
        return Response(resp.status, dict(resp.headers), body)

    registry.add(PREFIX, fhir, methods=ALL_METHODS, auth=auth, prefix=True, name="fhir",  # type: ignore[arg-type]
                 errors=fhir_error)


def _uses_unknown(path: str, query: str, unknown: dict[str, set[str]]) -> bool:
    codes = unknown.get(path.strip("/"))
    return bool(codes) and any(name.split(":")[0] in codes for name, _ in parse_qsl(query, keep_blank_values=True))


def _without_params(body: bytes, unknown: dict[str, set[str]]) -> bytes:
    statement = json.loads(body)
    for rest_entry in statement.get("rest", []):
        for resource in rest_entry.get("resource", []):
            codes = unknown.get(resource.get("type"), set())
            resource["searchParam"] = [p for p in resource.get("searchParam", []) if p.get("name") not in codes]
    return json.dumps(statement).encode()
