"""A loopback HTTP server that serves a `FhirStore` through `fhirstore.rest.handle`.

Used by integration tests to point real FHIR clients (fhirpy, httpx) at the embedded store.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from fhirstore import rest
from fhirstore.errors import operation_outcome
from fhirstore.port import FhirStore

PREFIX = "/fhir"
MAX_BODY = 32 * 1024 * 1024


@contextmanager
def serve_store(store: FhirStore, token: str | None = None, *,
                unknown_params: dict[str, set[str]] | None = None) -> Iterator[str]:
    """Serve `store` on 127.0.0.1 (a free port) and yield its FHIR base URL `http://127.0.0.1:PORT/fhir`.
    With `token`, every request must carry `Authorization: Bearer <token>` (401 otherwise).

    `unknown_params` (type -> parameter codes) makes it a server that does not know those search
    parameters, the way Medplum treats one: `/metadata` does not list them, and a search that uses
    one (with or without a modifier) answers an empty searchset Bundle instead of an error."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(store, token, unknown_params or {}))
    server.daemon_threads = True
    base_url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    server.base_url = base_url  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fhir-test-server",
                              daemon=True)
    thread.start()
    try:
        yield base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _handler_class(store: FhirStore, token: str | None,
                   unknown_params: dict[str, set[str]]) -> type[BaseHTTPRequestHandler]:
    class FhirHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, _outcome("too-costly", f"request body over {MAX_BODY} bytes"), {})
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            if url.path != PREFIX and not url.path.startswith(PREFIX + "/"):
                self._send(404, _outcome("not-found", f"FHIR lives under {PREFIX}/"), {})
                return
            if token is not None and not _authorized(self.headers.get("Authorization"), token):
                self._send(401, _outcome("login", "missing or invalid bearer token"),
                           {"WWW-Authenticate": "Bearer"})
                return
            path = url.path[len(PREFIX):]
            if self.command == "GET" and _uses_unknown(path, url.query, unknown_params):
                empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
                self._send(200, json.dumps(empty).encode(), {})
                return
            response = rest.handle(store, self.command, path, url.query,
                                   dict(self.headers.items()), body, self.server.base_url)  # type: ignore[attr-defined]
            if self.command == "GET" and path.strip("/") == "metadata" and unknown_params and response.status == 200:
                response = rest.RestResponse(200, response.headers, _without_params(response.body, unknown_params))
            self._send(response.status, response.body, response.headers)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body and "Content-Type" not in headers:
                self.send_header("Content-Type", rest.FHIR_JSON)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: request lines carry search values (identifiers, phone numbers)."""

    return FhirHandler


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


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, presented = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _outcome(code: str, text: str) -> bytes:
    return json.dumps(operation_outcome("error", code, text)).encode()
