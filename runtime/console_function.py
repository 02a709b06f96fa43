"""The console's ASGI app behind the Azure Functions `console` function (triggers/console_http.py).

Kept apart from `runtime.bootstrap` because it imports the console, which itself reads the
services bootstrap builds: here the import goes one way only.
"""

from __future__ import annotations

import secrets
import threading

from runtime.bootstrap import Services
from runtime.http_app import HttpApp, RouteRegistry

CONSOLE_ROUTE_PREFIX = "/api/console"  # host.json keeps the default "api" route prefix
_console_lock = threading.Lock()


def console_function_app(services: Services) -> HttpApp:
    """The console's ASGI app behind the `console` function (triggers/console_http.py), under
    `CONSOLE_ROUTE_PREFIX`: built on first use, never at import (an import-time failure would index
    zero functions), and kept in `services`."""
    from console.views import add_console_routes  # the console's pages: not at start-up

    with _console_lock:
        if services.console_app is None:
            registry = RouteRegistry()
            add_console_routes(registry, services, prefix=CONSOLE_ROUTE_PREFIX)
            # The console's own routes are anonymous at the registry (staff sign in); the token
            # guards only the token routes, which monitors reach through /api/operations instead.
            services.console_app = HttpApp(secrets.token_urlsafe(32), registry)
        return services.console_app
