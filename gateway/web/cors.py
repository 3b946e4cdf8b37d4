"""CORS for browser viewers on another origin, configured by `http.cors`.

Why Starlette's middleware: preflight (OPTIONS) requests must be answered before routing and
without a bearer token, and exposing `Warning` lets a viewer see QIDO paging and STOW warnings.
With no `allow_origins` configured no middleware is installed and no CORS header is sent.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from gateway.config import CorsSettings

ALLOWED_METHODS = ("GET", "POST", "OPTIONS")
ALLOWED_HEADERS = ("Authorization", "Accept", "Content-Type", "Range")
EXPOSED_HEADERS = ("Warning", "Content-Location", "Content-Length", "WWW-Authenticate")


def cors_middleware(cors: CorsSettings) -> list[Middleware]:
    """The middleware list for `create_app` (empty when CORS is not configured)."""
    if not cors.allow_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(cors.allow_origins),
            allow_methods=list(ALLOWED_METHODS),
            allow_headers=list(ALLOWED_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            allow_credentials=cors.allow_credentials,
            max_age=cors.max_age,
        )
    ]
