"""The ASGI app's route registry and key semantics, called in-process (httpx's ASGI transport)."""

from __future__ import annotations

import asyncio

import httpx

from runtime.http_app import HttpApp, Limits, Request, Response, RouteRegistry

TOKEN = "unit-token"


def _app() -> HttpApp:
    registry = RouteRegistry()

    def echo(request: Request) -> Response:
        return Response(200, {"Content-Type": "text/plain"},
                        f"{request.method} {dict(request.route_params)} {len(request.body)}".encode())

    registry.add("/api/items/{id}/notes/{note?}", echo, methods=("GET", "POST"))
    registry.add("/open", echo, auth="anonymous")
    registry.add("/tree", echo, methods=("GET",), prefix=True)
    return HttpApp(TOKEN, registry, Limits(max_body_bytes=1024))


def _call(method: str, url: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_one_call_registers_a_route_with_its_template_parameters() -> None:
    resp = _call("GET", "/api/items/7/notes", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.text == "GET {'id': '7'} 0"
    resp = _call("POST", "/api/items/7/notes/n1", headers={"x-functions-key": TOKEN}, content=b"abc")
    assert resp.text == "POST {'id': '7', 'note': 'n1'} 3"
    assert _call("GET", f"/tree/a/b?code={TOKEN}").text == "GET {'rest': '/a/b'} 0"
    assert _call("GET", "/open").status_code == 200


def test_keys_are_required_and_compared_exactly() -> None:
    assert _call("GET", "/api/items/7/notes").status_code == 401
    assert _call("GET", "/api/items/7/notes", headers={"x-functions-key": TOKEN + "x"}).status_code == 401
    # A Bearer header wins over x-functions-key, as on the old server.
    assert _call("GET", "/api/items/7/notes", headers={"x-functions-key": TOKEN,
                                                       "Authorization": "Bearer wrong"}).status_code == 401


def test_unknown_paths_and_methods() -> None:
    assert _call("GET", "/nowhere").status_code == 404
    resp = _call("DELETE", "/api/items/7/notes", headers={"x-functions-key": TOKEN})
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, POST"


def test_a_declared_body_over_the_limit_is_refused_unread() -> None:
    resp = _call("POST", "/api/items/7/notes", headers={"x-functions-key": TOKEN}, content=b"x" * 2048)
    assert resp.status_code == 413 and "1024" in resp.json()["error"]


def test_a_failing_handler_is_a_500_without_its_message() -> None:
    registry = RouteRegistry()

    def boom(request: Request) -> Response:
        raise ValueError("patient Jane Doe")

    registry.add("/boom", boom, auth="anonymous")

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=HttpApp(TOKEN, registry))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    resp = asyncio.run(go())
    assert resp.status_code == 500 and "Jane" not in resp.text


def test_a_storage_fault_in_a_handler_is_a_503_to_retry_and_names_the_file_in_the_log(caplog) -> None:
    """A full disk is the server's state, not the request's fault: 503 with Retry-After (RFC 9110
    §15.6.4, §10.2.3), so a gateway retries the message instead of treating it as a 500."""
    import sqlite3

    def full(request: Request) -> Response:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.vigil_path = "/data/fhir.db"  # type: ignore[attr-defined]
        raise exc

    def bug(request: Request) -> Response:
        raise KeyError("x")

    registry = RouteRegistry()
    registry.add("/full", full, auth="anonymous")
    registry.add("/bug", bug, auth="anonymous")

    async def go(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=HttpApp(TOKEN, registry))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    with caplog.at_level("WARNING"):
        resp = asyncio.run(go("/full"))
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    assert "disk is full" in resp.json()["error"]
    assert any("/data/fhir.db" in r.getMessage() and "disk is full" in r.getMessage() for r in caplog.records)
    assert asyncio.run(go("/bug")).status_code == 500  # anything else stays an internal error
