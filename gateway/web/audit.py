"""Access audit for the HTTP front end: one `http.request` event per request.

Who: the token's subject (`anonymous` when there was no valid token) and the client address.
What: method, route template and path. Which study: the `{study}` path parameter when it is a
valid UID (instances stored by STOW-RS are audited by ingest, `instance.received`). Outcome:
the HTTP status. Query strings are not stored, only their parameter names: a QIDO-RS search
by PatientName would otherwise copy patient data into the audit trail.

Probes (`/healthz`, `/readyz`, `/metrics`) are audited only when refused; load balancers call
them every few seconds and they carry no patient data.

Writing one row per request in its own transaction would cost one fsync per request. Events
go to a queue instead; one thread writes whatever has accumulated in one transaction (group
commit) and then releases the waiting requests. A request's task ends only after its event is
committed (the response has already been sent), so a graceful shutdown, which waits for
request tasks, never loses events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.db import Database
from gateway.db.events import record_event
from gateway.dicom.uids import is_valid_uid

log = logging.getLogger(__name__)

EVENT_KIND = "http.request"
ANONYMOUS = "anonymous"
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_BATCH = 500
_IDLE_EXIT_SECONDS = 5.0  # the writer thread ends when idle this long; restarted on demand
_WAIT_SECONDS = 30.0  # a request waits at most this long for its event to be committed
_MAX_PATH = 512


class AccessAudit:
    """ASGI middleware recording every HTTP request in the audit trail."""

    def __init__(self, app: ASGIApp, *, db: Database) -> None:
        self.app = app
        self.writer = AuditWriter(db)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The guard stores the Principal in request.state, i.e. in this dict; create it here
        # so that inner layers copying the scope still share it.
        scope.setdefault("state", {})
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            event = access_event(scope, status, time.monotonic() - started)
            if event is not None:
                await self.writer.submit(event)


def access_event(scope: Scope, status: int, seconds: float) -> dict[str, Any] | None:
    """The audit event for a finished request, or None for a successful probe."""
    path = str(scope.get("path", ""))
    if path in PROBE_PATHS and status not in (401, 403):
        return None
    state = scope.get("state") or {}
    principal = state.get("principal") if isinstance(state, Mapping) else None
    params = scope.get("path_params") or {}
    route = getattr(scope.get("route"), "path", None)
    client = scope.get("client")
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    detail: dict[str, Any] = {
        "method": scope.get("method"),
        "route": route,
        "path": path[:_MAX_PATH],
        "status": status or None,
        "peer": f"{client[0]}:{client[1]}" if client else None,
        "ms": round(seconds * 1000, 1),
    }
    if query:
        detail["query_keys"] = sorted(
            {part.partition("=")[0][:64] for part in query.split("&") if part}
        )[:50]
    client_id = getattr(principal, "client_id", None)
    if client_id:
        detail["client_id"] = client_id
    study = params.get("study")
    instance = params.get("instance")
    return {
        "kind": EVENT_KIND,
        "outcome": str(status or "disconnected"),
        "actor": getattr(principal, "subject", None) or ANONYMOUS,
        "study_uid": study if is_valid_uid(study) else None,
        "sop_uid": instance if is_valid_uid(instance) else None,
        "detail": detail,
    }


class AuditWriter:
    """Group commit of audit events from the event loop, in one background thread."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: queue.SimpleQueue[
            tuple[dict[str, Any], asyncio.Future[None], asyncio.AbstractEventLoop]
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, event: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((event, done, loop))
        self._ensure_thread()
        try:
            await asyncio.wait_for(asyncio.shield(done), _WAIT_SECONDS)
        except TimeoutError:
            log.error("audit event of %s not committed within %.0f s", event, _WAIT_SECONDS)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="http-audit-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_EXIT_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write([event for event, _, _ in batch])
            for _, done, loop in batch:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(_resolve, done)

    def _write(self, events: list[dict[str, Any]]) -> None:
        try:
            with self._db.transaction() as cur:
                for event in events:
                    record_event(cur, **event)
        except Exception:
            log.exception("could not write %d HTTP audit event(s)", len(events))


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
