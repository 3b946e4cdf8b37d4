"""`GET /metrics`: the gateway's metrics in the Prometheus text format.

Who may scrape: `/metrics` needs a token with `gateway.admin` (queue depths and AE titles are
operational data), unless `telemetry.metrics_public: true` lists it as public, for a scraper
that reaches the gateway on a private network and has no token. Reading the metrics runs the
gauge callbacks (one query of the delivery queue), so it happens in a worker thread. The text
format is 0.0.4, which every Prometheus-compatible scraper reads.
"""

from __future__ import annotations

import anyio.to_thread
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.principal import SCOPE_ADMIN
from gateway.config import Settings
from gateway.web.context import WebContext
from gateway.web.guard import PUBLIC


def metrics_scope(settings: Settings | None) -> str:
    """The route table's decision for /metrics (see the module docstring)."""
    if settings is not None and settings.telemetry.metrics_public:
        return PUBLIC
    return SCOPE_ADMIN


async def metrics(request: Request) -> Response:
    context: WebContext = request.app.state.context
    body = await anyio.to_thread.run_sync(context.metrics.prometheus_text)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
