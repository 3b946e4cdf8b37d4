"""Build the Starlette application from the route table.

Each route is declared once, with its scope, in `endpoints()`; `create_app` wraps every handler
with the guard. Handlers reach the core through `request.app.state.context`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from gateway.auth.principal import TokenVerifier
from gateway.web.context import WebContext
from gateway.web.guard import PUBLIC, Endpoint, guarded
from gateway.web.health import healthz, readyz


def endpoints() -> list[Endpoint]:
    """The route table: every HTTP endpoint and who may call it."""
    return [
        Endpoint("/healthz", healthz, ("GET",), PUBLIC, "healthz"),
        Endpoint("/readyz", readyz, ("GET",), PUBLIC, "readyz"),
    ]


def create_app(context: WebContext, verifier: TokenVerifier) -> Starlette:
    routes = [
        Route(item.path, guarded(item, verifier), methods=list(item.methods), name=item.name)
        for item in endpoints()
    ]
    app = Starlette(routes=routes)
    app.state.context = context
    return app
