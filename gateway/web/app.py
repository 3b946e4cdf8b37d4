"""Build the Starlette application from the route table.

Each route is declared once, with its scope, in `endpoints()`; `create_app` wraps every handler
with the guard. Handlers reach the core through `request.app.state.context`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway.admin.api import admin_endpoints
from gateway.admin.dashboard import dashboard
from gateway.auth.principal import TokenVerifier
from gateway.config import Settings
from gateway.web.audit import AccessAudit
from gateway.web.context import WebContext
from gateway.web.cors import cors_middleware
from gateway.web.dicomweb import dicomweb_endpoints
from gateway.web.errors import EXCEPTION_HANDLERS
from gateway.web.guard import PUBLIC, Endpoint
from gateway.web.health import healthz, readyz
from gateway.web.metrics import metrics, metrics_scope
from gateway.web.openapi import openapi_json
from gateway.web.routes import build_routes


def endpoints(settings: Settings | None = None) -> list[Endpoint]:
    """The route table: every HTTP endpoint and who may call it (`settings` may open /metrics)."""
    return [
        Endpoint("/healthz", healthz, ("GET",), PUBLIC, "healthz"),
        Endpoint("/readyz", readyz, ("GET",), PUBLIC, "readyz"),
        Endpoint("/openapi.json", openapi_json, ("GET",), PUBLIC, "openapi"),
        Endpoint("/metrics", metrics, ("GET",), metrics_scope(settings), "metrics"),
        Endpoint("/admin/", dashboard, ("GET",), PUBLIC, "admin_dashboard"),
        *admin_endpoints(),
        *dicomweb_endpoints(),
    ]


def create_app(context: WebContext, verifier: TokenVerifier) -> Starlette:
    app = Starlette(
        routes=build_routes(endpoints(context.settings), verifier),
        middleware=[
            Middleware(AccessAudit, db=context.db),  # outermost: even CORS preflights
            *cors_middleware(context.settings.http.cors),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.context = context
    return app
