"""The local HTTP server against clients that misbehave, over raw sockets on loopback.

Slow headers (slowloris), idle half-open connections, malformed Content-Length, chunked bodies
(and a body that looks like a second request), oversized bodies and slow bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.http_app import Limits
from runtime.http_server import ServerLimits, running_server
from tests.support.pipeline import add_patient, count, make_host, reading
from tests.support.raw_http import chunked, connect, read_response, read_until_closed, status_lines

TOKEN = "local-test-token"
IDLE_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_BODY = 64 * 1024
HALF_OPEN = 400  # the acceptance figure; bench/slow_clients.py measures it with the default timeouts too


@pytest.fixture
def server(data_dir: Path) -> Iterator[tuple[object, str]]:
    host = make_host(data_dir, local_token=TOKEN)
    host.acquire()
    add_patient(host.services, "p1")
    limits = ServerLimits(idle_timeout_s=IDLE_S, body=Limits(max_body_bytes=MAX_BODY, body_timeout_s=BODY_TIMEOUT_S))
    with running_server(host, TOKEN, limits=limits) as url:
        yield host, url
    host.release()
    host.services.close()


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _health(url: str) -> float:
    start = time.monotonic()
    resp = httpx.get(f"{url}/api/health", timeout=5)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    return time.monotonic() - start


def test_slow_headers_are_cut_off_after_the_idle_timeout(server) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start = time.monotonic()
    closed = False
    # A slowloris client: one more header line every 0.2 s, never the blank line that ends them.
    for i in range(int(IDLE_S * 10)):
        try:
            sock.sendall(f"X-Slow-{i}: y\r\n".encode())
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    if not closed:
        _, closed = read_until_closed(sock, timeout_s=IDLE_S + 2)
    elapsed = time.monotonic() - start
    sock.close()
    assert closed, "the server kept a connection whose headers never ended"
    assert elapsed < IDLE_S + 2.0, f"closed only after {elapsed:.1f} s"
    _health(url)


def test_idle_half_open_connections_neither_block_health_nor_outlive_the_timeout(server) -> None:
    _, url = server
    socks = []
    for i in range(HALF_OPEN):
        sock = connect(url)
        if i % 2:  # half send nothing at all, half a request line and no more
            sock.sendall(b"POST /api/ingest HTTP/1.1\r\n")
        socks.append(sock)
    opened = time.monotonic()
    # While they are all open, a health check answers at once.
    assert _health(url) < 1.0
    deadline = opened + IDLE_S + 3.0
    still_open = []
    for sock in socks:
        _, closed = read_until_closed(sock, timeout_s=max(0.01, deadline - time.monotonic()))
        if not closed:
            still_open.append(sock)
        sock.close()
    assert still_open == [], f"{len(still_open)} of {HALF_OPEN} idle connections outlived the timeout"
    assert _health(url) < 1.0


@pytest.mark.parametrize("value", ["²", "-1", "12abc", " ", "1e3", "0x10"])
def test_malformed_content_length_is_a_400_and_closes_the_connection(server, value: str, caplog) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall(_head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}", f"Content-Length: {value}") + b"{}")
    data, closed = read_until_closed(sock, timeout_s=5)
    sock.close()
    assert status_lines(data) == [400]
    assert closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"
    _health(url)


def test_two_conflicting_content_lengths_are_refused(server) -> None:
    host, url = server
    body = reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70})
    sock = connect(url)
    sock.sendall(_head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}", f"Content-Length: {len(body)}",
                       f"Content-Length: {len(body) + 5}") + body)
    data, closed = read_until_closed(sock, timeout_s=5)
    sock.close()
    assert status_lines(data) == [400] and closed
    assert count(host.services, "Observation") == 0


def test_a_chunked_body_is_read_as_the_body(server) -> None:
    host, url = server
    lines = [reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70}),
             reading("p1", "spo2", "2026-11-20T07:31:00Z", {"percent": 97})]
    payload = b"\n".join(lines)
    sock = connect(url)
    sock.sendall(_head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}", "Transfer-Encoding: chunked")
                 + chunked(payload[:7], payload[7:60], payload[60:]))
    response = read_response(sock)
    sock.close()
    assert status_lines(response) == [200]
    report = json.loads(response.partition(b"\r\n\r\n")[2])
    assert report["received"] == 2
    assert count(host.services, "Observation") == 2


def test_a_request_hidden_in_a_chunked_body_is_never_served(server) -> None:
    """Request smuggling: the body carries what looks like a second request. It must stay body."""
    host, url = server
    message = reading("p1", "heart_rate", "2026-11-20T07:30:00Z", {"bpm": 70})
    smuggled = _head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}",
                     f"Content-Length: {len(message)}") + message
    resource = json.dumps({"resourceType": "Basic", "code": {"text": smuggled.decode()}}).encode()
    sock = connect(url)
    sock.sendall(_head("POST", "/fhir/Basic", f"Authorization: Bearer {TOKEN}",
                       "Content-Type: application/fhir+json", "Transfer-Encoding: chunked")
                 + chunked(resource[:20], smuggled, resource[20:]) + _head("GET", "/api/health"))
    first = read_response(sock)
    second = read_response(sock)  # the request pipelined after the body is a real one: answered
    _, closed = read_until_closed(sock, timeout_s=IDLE_S + 2)
    sock.close()
    assert status_lines(first) == [400]  # the chunks spliced the "request" into the JSON: invalid JSON
    assert json.loads(first.partition(b"\r\n\r\n")[2])["resourceType"] == "OperationOutcome"
    assert status_lines(second) == [200]
    assert closed
    assert count(host.services, "Observation") == 0, "the request hidden in the body was served"


def test_a_chunked_resource_holding_request_text_is_stored_as_text(server) -> None:
    _, url = server
    smuggled = _head("GET", "/api/health")
    resource = json.dumps({"resourceType": "Basic", "code": {"text": smuggled.decode()}}).encode()
    sock = connect(url)
    sock.sendall(_head("POST", "/fhir/Basic", f"Authorization: Bearer {TOKEN}",
                       "Content-Type: application/fhir+json", "Transfer-Encoding: chunked")
                 + chunked(resource[:30], resource[30:]))
    first = read_response(sock)
    data, _ = read_until_closed(sock, timeout_s=IDLE_S + 2)
    sock.close()
    assert status_lines(first) == [201] and status_lines(data) == []
    assert json.loads(first.partition(b"\r\n\r\n")[2])["code"]["text"] == smuggled.decode()


def test_content_length_beside_chunked_does_not_split_the_stream(server) -> None:
    _, url = server
    body = chunked(b"{\"resourceType\":\"Basic\"}")
    sock = connect(url)
    # A front proxy reading Content-Length would stop after 5 bytes; the server must not.
    sock.sendall(_head("POST", "/fhir/Basic", f"Authorization: Bearer {TOKEN}", "Content-Type: application/fhir+json",
                       "Content-Length: 5", "Transfer-Encoding: chunked") + body)
    data, _ = read_until_closed(sock, timeout_s=3)
    sock.close()
    codes = status_lines(data)
    assert len(codes) == 1 and codes[0] in (201, 400), data[:200]


def test_an_oversized_body_is_refused_before_it_is_sent(server) -> None:
    host, url = server
    sock = connect(url)
    # Only the headers: the 413 must come without the server waiting for (or reading) 10 MB.
    sock.sendall(_head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}", f"Content-Length: {10 * 1024 * 1024}"))
    start = time.monotonic()
    data, closed = read_until_closed(sock, timeout_s=5)
    sock.close()
    assert status_lines(data) == [413]
    assert time.monotonic() - start < 1.0
    assert closed, "the unread body must not be parsed as the next request"
    assert count(host.services, "Observation") == 0


def test_an_oversized_chunked_body_is_cut_off_at_the_limit(server) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall(_head("POST", "/fhir/Basic", f"Authorization: Bearer {TOKEN}", "Content-Type: application/fhir+json",
                       "Transfer-Encoding: chunked"))
    sent = 0
    try:
        for _ in range(MAX_BODY // 4096 * 4):
            sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            sent += 4096
    except OSError:
        pass  # the server closed while we were still sending: what it should do
    data, _ = read_until_closed(sock, timeout_s=5)
    sock.close()
    assert status_lines(data) == [413]
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "too-costly"


def test_a_body_that_trickles_in_past_the_body_timeout_gets_408(server) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall(_head("POST", "/api/ingest", f"Authorization: Bearer {TOKEN}", "Content-Length: 1000"))
    start = time.monotonic()
    data = b""
    # One byte every 0.3 s: never silent long enough for the idle timeout, far too slow overall.
    while time.monotonic() - start < BODY_TIMEOUT_S + 2:
        try:
            sock.sendall(b"x")
        except OSError:
            break
        sock.settimeout(0.3)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    sock.close()
    assert status_lines(data) == [408]
    assert time.monotonic() - start < BODY_TIMEOUT_S + 2


def test_without_the_key_the_body_is_not_read(server) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall(_head("POST", "/api/ingest", f"Content-Length: {MAX_BODY}"))
    data, closed = read_until_closed(sock, timeout_s=3)
    sock.close()
    assert status_lines(data) == [401] and closed


def test_keep_alive_serves_several_requests_on_one_connection(server) -> None:
    _, url = server
    sock = connect(url)
    for _ in range(3):
        sock.sendall(_head("GET", "/api/health"))
        assert status_lines(read_response(sock)) == [200]
    sock.close()


def test_a_non_ascii_request_target_is_a_400(server) -> None:
    _, url = server
    sock = connect(url)
    sock.sendall("GET /api/health/é HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data, closed = read_until_closed(sock, timeout_s=3)
    sock.close()
    assert status_lines(data) == [400] and closed
    _health(url)


def test_oversized_headers_are_refused_with_431(server) -> None:
    _, url = server
    sock = connect(url)
    with contextlib.suppress(OSError):  # closed while we were still sending: fine
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    data, closed = read_until_closed(sock, timeout_s=3)
    sock.close()
    assert status_lines(data) == [431] and closed


def test_the_fhir_facade_refuses_without_the_token_in_fhir_terms(server) -> None:
    _, url = server
    resp = httpx.get(f"{url}/fhir/metadata")
    assert resp.status_code == 401
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{url}/fhir/metadata", headers={"x-functions-key": TOKEN}).status_code == 200
    assert httpx.delete(f"{url}/api/health").status_code == 405


def test_server_holds_more_connections_than_the_slow_client_test_opens() -> None:
    from runtime.http_server import connection_capacity

    assert connection_capacity() > HALF_OPEN + 100
    assert socket.SOMAXCONN > 0
