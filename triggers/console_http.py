"""The console on Azure Functions: one HTTP function hands `/api/console/...` to the console's ASGI
app (azure-functions' `AsgiMiddleware`; the app is built by `runtime.console_function`).
Identity comes from App Service Authentication headers when VIGIL_CONSOLE_IDENTITY=app-service
(docs/console.md); `vigil serve` serves the console itself and never routes to this function
(runtime/http_server.py)."""

from __future__ import annotations

import azure.functions as func

from runtime.bootstrap import current
from runtime.console_function import console_function_app

bp = func.Blueprint()


@bp.function_name("console")
@bp.route(route="console/{*path}", auth_level=func.AuthLevel.ANONYMOUS, methods=["GET", "POST"])
async def console(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return await func.AsgiMiddleware(console_function_app(current())).handle_async(req, context)
