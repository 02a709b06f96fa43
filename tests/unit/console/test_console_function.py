"""The console's Azure Functions entry point: the same ASGI app behind `AsgiMiddleware`, under
/api/console, trusting App Service Authentication only with VIGIL_CONSOLE_IDENTITY=app-service."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest

from runtime.bootstrap import bootstrap, install
from runtime.settings import Settings
from triggers import console_http

PRINCIPAL = base64.b64encode(json.dumps({"claims": [{"typ": "roles", "val": "nurse"}]}).encode()).decode()


@pytest.fixture
def function(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    services = bootstrap(Settings.from_env({}, data_dir=tmp_path, console_identity=request.param,
                                           contact_phone="+15550100999"))
    install(services)
    yield
    install(None)
    services.close()


def _get(path: str, headers: dict[str, str]) -> func.HttpResponse:
    req = func.HttpRequest(method="GET", url=f"https://vigil.example{path}", headers=headers, body=b"")
    return asyncio.run(console_http.console(req, None))  # type: ignore[arg-type]


@pytest.mark.parametrize("function", ["app-service"], indirect=True)
def test_behind_app_service_the_principal_signs_in(function: None) -> None:
    r = _get("/api/console/gaps", {"X-MS-CLIENT-PRINCIPAL": PRINCIPAL, "X-MS-CLIENT-PRINCIPAL-ID": "oid-7"})
    assert r.status_code == 200 and b"Not transmitting" in r.get_body()
    assert b'href="/api/console/inbox"' in r.get_body()  # links carry the function's route prefix


@pytest.mark.parametrize("function", ["local"], indirect=True)
def test_without_the_setting_the_header_is_ignored(function: None) -> None:
    r = _get("/api/console/gaps", {"X-MS-CLIENT-PRINCIPAL": PRINCIPAL, "X-MS-CLIENT-PRINCIPAL-ID": "oid-7"})
    assert r.status_code == 303 and r.headers["Location"] == "/api/console/login"
