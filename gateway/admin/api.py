"""The operator JSON API (scope `gateway.admin`): queue, studies, traces, audit, retry.

It answers from the database the gateway writes, the same records `dicom-gateway trace`,
`queue` and `retry` use, so the CLI, this API and the dashboard never disagree.
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.studies import recent_studies
from gateway.auth.principal import SCOPE_ADMIN
from gateway.db.deliveries import queue_summary, requeue_dead
from gateway.db.events import events_for
from gateway.report import destinations_health, study_trace
from gateway.web.errors import WebProblem, problem_handler
from gateway.web.guard import Endpoint, principal_of
from gateway.web.urls import context_of, path_uid

_MAX_LIMIT = 1000


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise WebProblem(400, f"limit must be a whole number from 1 to {_MAX_LIMIT}")
    return int(raw)


@problem_handler
async def queue(request: Request) -> Response:
    """GET /admin/queue: depth and oldest age per destination and state."""
    db = context_of(request).db
    rows = await anyio.to_thread.run_sync(lambda: queue_summary(db))
    destinations = sorted(context_of(request).settings.destinations)
    return JSONResponse({"destinations": destinations, "queue": rows})


@problem_handler
async def destinations(request: Request) -> Response:
    """GET /admin/destinations: each destination's health (circuit breaker) and failover."""
    context = context_of(request)
    rows = await anyio.to_thread.run_sync(lambda: destinations_health(context.settings, context.db))
    return JSONResponse({"destinations": rows})


@problem_handler
async def studies(request: Request) -> Response:
    """GET /admin/studies: recent studies and where their copies stand."""
    db = context_of(request).db
    limit = _limit(request, 50)
    rows = await anyio.to_thread.run_sync(lambda: recent_studies(db, limit=limit))
    return JSONResponse({"studies": rows})


@problem_handler
async def trace(request: Request) -> Response:
    """GET /admin/studies/{study}/trace: decision, deliveries, attempts and trace ids."""
    study = path_uid(request, "study")
    db = context_of(request).db
    result = await anyio.to_thread.run_sync(lambda: study_trace(db, study))
    if not result["instances"]:
        raise WebProblem(404, f"study {study} was never received (or its records were purged)")
    return JSONResponse(result)


@problem_handler
async def audit(request: Request) -> Response:
    """GET /admin/audit?study=UID&actor=NAME: the newest events, oldest first."""
    study = request.query_params.get("study")
    actor = request.query_params.get("actor")
    if study is None and actor is None:
        raise WebProblem(400, "give study=UID or actor=NAME (or both)")
    db = context_of(request).db
    limit = _limit(request, 500)
    rows = await anyio.to_thread.run_sync(
        lambda: events_for(db, study_uid=study, actor=actor, limit=limit)
    )
    return JSONResponse({"events": rows})


@problem_handler
async def retry(request: Request) -> Response:
    """POST /admin/destinations/{destination}/retry[?study=UID]: re-queue dead deliveries."""
    context = context_of(request)
    destination = str(request.path_params["destination"])
    if destination not in context.settings.destinations:
        known = ", ".join(sorted(context.settings.destinations)) or "none"
        raise WebProblem(404, f"no destination {destination[:64]!r}; configured: {known}")
    study = request.query_params.get("study")
    if study is not None:
        request.path_params["study"] = study
        study = path_uid(request, "study")
    principal = principal_of(request)
    actor = principal.subject if principal else "admin-api"
    count = await anyio.to_thread.run_sync(
        lambda: requeue_dead(context.db, destination, study_uid=study, actor=actor)
    )
    return JSONResponse({"destination": destination, "study": study, "requeued": count})


def admin_endpoints() -> list[Endpoint]:
    """The operator routes; every one needs `gateway.admin`."""
    return [
        Endpoint("/admin/queue", queue, ("GET",), SCOPE_ADMIN, "admin_queue"),
        Endpoint("/admin/studies", studies, ("GET",), SCOPE_ADMIN, "admin_studies"),
        Endpoint("/admin/destinations", destinations, ("GET",), SCOPE_ADMIN, "admin_destinations"),
        Endpoint("/admin/studies/{study}/trace", trace, ("GET",), SCOPE_ADMIN, "admin_trace"),
        Endpoint("/admin/audit", audit, ("GET",), SCOPE_ADMIN, "admin_audit"),
        Endpoint(
            "/admin/destinations/{destination}/retry",
            retry,
            ("POST",),
            SCOPE_ADMIN,
            "admin_retry",
        ),
    ]
