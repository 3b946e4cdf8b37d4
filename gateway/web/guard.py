"""Every HTTP route declares who may call it; this module enforces the declaration.

The route table is the source of truth: `Endpoint.scope` is either a scope name or PUBLIC, and
`create_app` refuses an endpoint without one, so a route can't be added without an auth
decision. Missing/invalid tokens get 401 with `WWW-Authenticate`; a missing scope gets 403.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.principal import Principal, TokenVerifier
from gateway.exceptions import AuthError

log = logging.getLogger(__name__)

PUBLIC = "public"
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One HTTP route with its required scope (or PUBLIC)."""

    path: str
    handler: Handler
    methods: tuple[str, ...]
    scope: str
    name: str


def guarded(endpoint: Endpoint, verifier: TokenVerifier) -> Handler:
    """Wrap a handler so it runs only for a caller holding `endpoint.scope`."""
    if not endpoint.scope:
        raise ValueError(f"route {endpoint.path} has no auth decision (scope or PUBLIC)")
    if endpoint.scope == PUBLIC:
        return endpoint.handler

    async def handler(request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("a bearer token is required", error=None)
        try:
            # In a worker thread: an OIDC verifier may have to fetch the issuer's keys.
            principal = await anyio.to_thread.run_sync(verifier.verify, token.strip())
        except AuthError as exc:
            log.info("refused %s %s: %s", request.method, request.url.path, exc)
            return _unauthorized(str(exc), error="invalid_token")
        if endpoint.scope not in principal.scopes:
            return JSONResponse(
                {
                    "error": "insufficient_scope",
                    "detail": f"this endpoint needs the scope {endpoint.scope}",
                },
                status_code=403,
                headers={
                    "WWW-Authenticate": f'Bearer realm="dicom-gateway", '
                    f'error="insufficient_scope", scope="{endpoint.scope}"'
                },
            )
        request.state.principal = principal
        return await endpoint.handler(request)

    handler.__name__ = endpoint.name
    handler.required_scope = endpoint.scope  # type: ignore[attr-defined]
    return handler


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def _unauthorized(detail: str, *, error: str | None) -> Response:
    challenge = 'Bearer realm="dicom-gateway"'
    if error:
        challenge += f', error="{error}", error_description="{detail.replace(chr(34), chr(39))}"'
    return JSONResponse(
        {"error": error or "unauthorized", "detail": detail},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )
