"""The local HTTP server: /api/<route> to the app's HTTP-trigger functions, /fhir to the store.

Authentication mirrors Azure: functions with auth level "function" or "admin" need the key (here
the local token) in `x-functions-key`, a `code` query parameter, or `Authorization: Bearer`;
"anonymous" functions do not. /fhir always needs the token.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from fhirstore import rest
from runtime.host import LocalHost

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024 * 1024


def make_server(host: LocalHost, token: str, address: tuple[str, int]) -> ThreadingHTTPServer:
    services = host.services

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            # Paths can carry identifiers: log the method and status only.
            log.debug("http %s", self.command)

        def _authorized(self, query: dict[str, str]) -> bool:
            supplied = self.headers.get("x-functions-key") or query.get("code") or ""
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                supplied = auth[7:].strip()
            return hmac.compare_digest(supplied.encode(), token.encode())

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode())

        def _body(self) -> bytes | None:
            text = self.headers.get("Content-Length") or "0"
            if not text.isdigit():
                self._refuse(400, "Content-Length must be a non-negative integer")
                return None
            length = int(text)
            if length > MAX_BODY:
                self._refuse(413, f"request body over {MAX_BODY} bytes")
                return None
            return self.rfile.read(length) if length else b""

        def _refuse(self, status: int, message: str) -> None:
            # The body was not read: close the connection rather than parse it as the next request.
            self.close_connection = True
            self._error(status, message)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            # Route and authenticate before reading a body: no one gets 16 MB read without the key.
            if parts.path == "/fhir" or parts.path.startswith("/fhir/"):
                if not self._authorized(query):
                    self._refuse(401, "missing or wrong token")
                    return
                body = self._body()
                if body is None:
                    return
                base = "http://" + self.headers.get("Host", f"{address[0]}:{address[1]}") + "/fhir"
                resp = rest.handle(services.store, self.command, parts.path[len("/fhir"):].lstrip("/"),
                                   parts.query, dict(self.headers.items()), body, base)
                self._send(resp.status, resp.headers, resp.body)
                return
            if not parts.path.startswith("/api/"):
                self._refuse(404, "not found")
                return
            sub = parts.path[len("/api"):]
            for spec in host.http_functions():
                assert spec.route_regex is not None
                m = spec.route_regex.match(sub)
                if not m:
                    continue
                if self.command not in spec.methods:
                    self._refuse(405, f"method {self.command} not allowed")
                    return
                if spec.auth_level != "anonymous" and not self._authorized(query):
                    self._refuse(401, "missing or wrong function key")
                    return
                body = self._body()
                if body is None:
                    return
                request = func.HttpRequest(
                    method=self.command,
                    url=f"http://{address[0]}:{address[1]}{self.path}",
                    headers=dict(self.headers.items()),
                    params=query,
                    route_params={k: v for k, v in m.groupdict().items() if v is not None},
                    body=body,
                )
                try:
                    response = spec.call(**{spec.arg_name: request})
                except Exception as exc:
                    host.stats.count(spec.name, ok=False)
                    log.warning("http function %s failed: %s", spec.name, type(exc).__name__)
                    self._error(500, "internal error")
                    return
                host.stats.count(spec.name, ok=True)
                headers = dict(response.headers.items())
                headers.setdefault("Content-Type", response.mimetype or "text/plain")
                self._send(response.status_code, headers, response.get_body())
                return
            self._refuse(404, "no function has that route")

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    return server


@contextmanager
def running_server(host: LocalHost, token: str, address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[str]:
    """Run the server in a thread; yields its base URL (http://127.0.0.1:PORT)."""
    server = make_server(host, token, address)
    thread = threading.Thread(target=server.serve_forever, name="vigil-http", daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
