"""Raw-socket HTTP clients for testing the server's framing and timeouts (what httpx won't send)."""

from __future__ import annotations

import socket
import time
import weakref
from urllib.parse import urlsplit

# Bytes read past the end of one response (a pipelined next response can arrive in the same recv),
# kept for the next read on that socket.
_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def connect(url: str, timeout_s: float = 10.0) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection: (data, closed by the server).
    `closed` is False when `timeout_s` passed with the connection still open."""
    data = _LEFTOVER.pop(sock, b"")
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def read_response(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """One response (head and a Content-Length body), leaving the connection open."""
    data = _LEFTOVER.pop(sock, b"")
    sock.settimeout(timeout_s)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if len(body) > length:
        _LEFTOVER[sock] = body[length:]
        body = body[:length]
    return head + b"\r\n\r\n" + body


def status_lines(data: bytes) -> list[int]:
    """The status codes of every response in `data` (final ones: 1xx interim answers skipped)."""
    codes = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/1."):
            code = int(line.split()[1])
            if code >= 200:
                codes.append(code)
    return codes


def chunked(*parts: bytes) -> bytes:
    """A chunked transfer-coding of `parts`, with the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
