"""Turn the route table into Starlette routes: one route per path, dispatching by method.

Why: STOW-RS (`POST /studies`, scope dicomweb.write) and QIDO-RS (`GET /studies`, scope
dicomweb.read) share a path but not a scope, so each method keeps its own guarded handler.
Starlette would answer a third method on the first of two same-path routes with an `Allow`
header naming only that route's methods; one route per path with every method listed makes
`405 Method Not Allowed` name them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.principal import TokenVerifier
from gateway.web.guard import Endpoint, Handler, guarded


def build_routes(table: Sequence[Endpoint], verifier: TokenVerifier) -> list[Route]:
    """Routes in table order (first appearance of each path), each guarded per method."""
    by_path: dict[str, dict[str, Handler]] = {}
    names: dict[str, str] = {}
    for item in table:
        handlers = by_path.setdefault(item.path, {})
        names.setdefault(item.path, item.name)
        guarded_handler = guarded(item, verifier)
        for method in item.methods:
            if method in handlers:
                raise ValueError(f"route {method} {item.path} is declared twice")
            handlers[method] = guarded_handler
    routes = []
    for path, handlers in by_path.items():
        if len(handlers) == 1:
            [(method, handler)] = handlers.items()
            routes.append(Route(path, handler, methods=[method], name=names[path]))
        else:
            routes.append(
                Route(path, _dispatch(handlers), methods=list(handlers), name=names[path])
            )
    return routes


def _dispatch(handlers: dict[str, Handler]) -> Handler:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch
