"""A loopback stand-in for exactly the ADLS Gen2 calls the Data Lake destination makes (Azurite has no dfs
endpoint), as the Data Lake Storage Gen2 REST API defines them
(https://learn.microsoft.com/rest/api/storageservices/data-lake-storage-gen2):

- `PUT /{fs}/{path}?resource=file` (Path - Create; overwrites an existing file, creates parent folders);
- `PATCH …?action=append&position=N` then `PATCH …?action=flush&position=LEN` (Path - Update): appended bytes
  are staged and only a flush at the staged length makes them the file's content;
- `GET /{fs}/{path}` with `x-ms-range` (the SDK reads a file through the Blob API's Get Blob): 206 and
  `Content-Range`, or 404 `BlobNotFound`;
- `DELETE /{fs}/{path}?recursive=true` (Path - Delete): the folder and everything below, or 404 `PathNotFound`.

Every request must carry a SharedKey `Authorization` for the account and an `x-ms-version`. Anything else
answers 400 `UnsupportedOperation`, so a new call the destination starts making shows up as a failing test.
`fail_writes(n, status, code)` makes the next n writes fail as the service would (e.g. 500 `InternalError`);
`refuse_writes_after(n)` lets n more through, then refuses all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ACCOUNT = "lakeaccount"
KEY = "bGFrZS1zdHViLWtleS1ub3QtYS1zZWNyZXQ="


@dataclass
class DfsStub:
    files: dict[str, bytes] = field(default_factory=dict)  # "fs/path" -> committed content
    staged: dict[str, bytearray] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, operation)
    failures: list[tuple[int, str]] = field(default_factory=list)
    writes: int = 0
    refuse_after: tuple[int, int, str] | None = None  # (writes allowed, status, error code)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def account_url(self) -> str:
        return f"{self.url}/{ACCOUNT}"

    def fail_writes(self, n: int, status: int = 500, code: str = "InternalError") -> None:
        with self.lock:
            self.failures.extend([(status, code)] * n)

    def refuse_writes_after(self, allowed: int, status: int = 500, code: str = "InternalError") -> None:
        """Let `allowed` more writes through, then refuse every write (a full or failing service)."""
        with self.lock:
            self.refuse_after = (self.writes + allowed, status, code)

    def under(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.files.items() if k.startswith(prefix)}


def _handler(stub: DfsStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("x-ms-request-id", "stub")
            self.send_header("x-ms-version", self.headers.get("x-ms-version", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            self._send(status, body, {"x-ms-error-code": code, "Content-Type": "application/json"})

        def _route(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            segments = unquote(parts.path).lstrip("/").split("/", 1)
            auth = self.headers.get("Authorization", "")
            if not auth.startswith(f"SharedKey {ACCOUNT}:") or not self.headers.get("x-ms-version"):
                return self._error(403, "AuthenticationFailed", "no SharedKey for the account")
            if len(segments) < 2 or segments[0] != ACCOUNT or "/" not in segments[1]:
                return self._error(400, "UnsupportedOperation", f"{self.command} {parts.path}")
            key = segments[1]
            op = query.get("resource") or query.get("action") or ("recursive" if "recursive" in query else "read")
            with stub.lock:
                stub.calls.append((self.command, op))
                write = self.command in ("PUT", "PATCH", "DELETE")
                if write and stub.failures:
                    status, code = stub.failures.pop(0)
                    return self._error(status, code, "the service refused the write")
                if write and stub.refuse_after is not None and stub.writes >= stub.refuse_after[0]:
                    return self._error(stub.refuse_after[1], stub.refuse_after[2], "the service refused the write")
                if write:
                    stub.writes += 1
                etag = {"ETag": '"0x1"', "Last-Modified": formatdate(usegmt=True)}
                if self.command == "PUT" and query.get("resource") == "file":
                    stub.staged[key] = bytearray()
                    stub.files[key] = b""
                    return self._send(201, headers=etag)
                if self.command == "PATCH" and op == "append":
                    staged = stub.staged.get(key)
                    if staged is None or int(query.get("position", -1)) != len(staged):
                        return self._error(400, "InvalidFlushPosition", "append at a position other than the end")
                    staged.extend(body)
                    return self._send(202)
                if self.command == "PATCH" and op == "flush":
                    staged = stub.staged.get(key)
                    if staged is None or int(query.get("position", -1)) != len(staged):
                        return self._error(400, "InvalidFlushPosition", "flush at a position other than the end")
                    stub.files[key] = bytes(staged)
                    return self._send(200, headers=etag)
                if self.command == "GET" and op == "read":
                    data = stub.files.get(key)
                    if data is None:
                        return self._error(404, "BlobNotFound", "The specified blob does not exist.")
                    end = len(data) - 1
                    return self._send(206, data, {**etag, "Content-Range": f"bytes 0-{end}/{len(data)}",
                                                  "Content-Type": "application/octet-stream",
                                                  "x-ms-blob-type": "BlockBlob", "Accept-Ranges": "bytes"})
                if self.command == "DELETE" and query.get("recursive") == "true":
                    gone = [k for k in stub.files if k == key or k.startswith(key + "/")]
                    if not gone:
                        return self._error(404, "PathNotFound", "The specified path does not exist.")
                    for k in gone:
                        stub.files.pop(k, None)
                        stub.staged.pop(k, None)
                    return self._send(200)
            return self._error(400, "UnsupportedOperation", f"{self.command} {op}")

        do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route

    return Handler


@contextmanager
def run_dfs_stub() -> Iterator[DfsStub]:
    stub = DfsStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
