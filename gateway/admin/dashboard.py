"""The command center page: a static shell (public) that reads the admin API with a token.

The page itself holds no data, so serving it without a token leaks nothing; every number it
shows comes from `/admin/*` with the operator's `gateway.admin` bearer token, kept only in the
browser tab's session storage.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
    "style-src 'unsafe-inline' 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def _page() -> str:
    return resources.files("gateway.admin").joinpath("dashboard.html").read_text("utf-8")


async def dashboard(request: Request) -> Response:
    """GET /admin/: the dashboard page."""
    return HTMLResponse(_page(), headers=_SECURITY_HEADERS)
