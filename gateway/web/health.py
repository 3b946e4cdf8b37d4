"""Liveness and readiness probes for load balancers and orchestrators (public routes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.web.context import WebContext


async def healthz(request: Request) -> Response:
    """The process is alive and serving HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Database, spool and DIMSE listener can take work now."""
    context: WebContext = request.app.state.context
    problems = context.readiness_problems()
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})
