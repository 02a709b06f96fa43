"""The console on Azure Functions: one HTTP function hands `/api/console/...` to the console's ASGI
app (azure-functions' `AsgiMiddleware`). Identity comes from App Service Authentication headers
when VIGIL_CONSOLE_IDENTITY=app-service (docs/console.md); `vigil serve` serves the console itself
and never routes to this function (runtime/http_server.py)."""

from __future__ import annotations

import secrets
import threading

import azure.functions as func

from runtime.bootstrap import current
from runtime.http_app import HttpApp, RouteRegistry

bp = func.Blueprint()
ROUTE_PREFIX = "/api/console"  # host.json keeps the default "api" route prefix
_lock = threading.Lock()
_app: HttpApp | None = None


def console_app() -> HttpApp:
    """Built on first use, never at import (an import-time failure would index zero functions)."""
    global _app
    with _lock:
        if _app is None:
            from console.views import add_console_routes

            registry = RouteRegistry()
            add_console_routes(registry, current(), prefix=ROUTE_PREFIX)
            # The console's own routes are anonymous at the registry (staff sign in); the token
            # guards only the token routes, which monitors reach through /api/operations instead.
            _app = HttpApp(secrets.token_urlsafe(32), registry)
        return _app


@bp.function_name("console")
@bp.route(route="console/{*path}", auth_level=func.AuthLevel.ANONYMOUS, methods=["GET", "POST"])
async def console(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return await func.AsgiMiddleware(console_app()).handle_async(req, context)
