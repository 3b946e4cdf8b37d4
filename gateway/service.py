"""The running gateway: wires spool, database, ingest, the DIMSE listener and the workers.

Concurrency model (see docs/architecture.md): the core (ingest, database, spool) is synchronous
and thread-safe. pynetdicom runs each association in its own thread and calls ingest directly;
each destination has `workers` delivery threads; a housekeeping thread purges expired bytes
and moves expired audit events to the archive (`audit.retention_days`).
The HTTP front end runs on one asyncio loop and calls the same core through worker threads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import partial
from typing import Any

from gateway import __version__
from gateway.audit_retention import prune_audit
from gateway.config import Settings
from gateway.db import Database, open_database
from gateway.db.events import audit
from gateway.exceptions import ArchiveError, GatewayError
from gateway.forward.factory import make_sender
from gateway.forward.health import Breaker
from gateway.forward.traced import TracedSender
from gateway.forward.worker import DeliveryWorker
from gateway.ingest import Ingestor, IngestResult
from gateway.retention import STAGING_LEFTOVER_SECONDS, purge_expired, sweep_staging
from gateway.spool import Spool, open_spool
from gateway.telemetry import Telemetry
from gateway.transform.sender import transformer_for, with_transform

log = logging.getLogger(__name__)

_HOUSEKEEPING_SECONDS = 60.0


class Gateway:
    """One gateway process; `start()` returns once the DIMSE listener accepts connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool: Spool = open_spool(settings.storage.spool)
        self.db: Database = open_database(settings.storage.database)
        self.telemetry = Telemetry.from_environment(
            service_version=__version__, instance_id=f"{socket.gethostname()}-{os.getpid()}"
        )
        self.telemetry.metrics.observe(self.db, self.spool, settings.destinations)
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in settings.destinations}
        self.ingestor = Ingestor(
            settings, self.spool, self.db, telemetry=self.telemetry, on_stored=self._new_work
        )
        self._workers: list[DeliveryWorker] = []
        # Built here, not at start: a missing de-identification secret stops `serve` at once.
        self._transformers = {
            name: transformer_for(destination, workdir=self.spool.staging_dir)
            for name, destination in settings.destinations.items()
        }
        self._commitment_wake = threading.Event()
        self._reporter: Any = None
        self._server: Any = None
        self._housekeeper: threading.Thread | None = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self.instance_name = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def dimse_port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else 0

    def start(self) -> None:
        from gateway.dimse.ae import start_listener

        self.telemetry.start()
        self._reporter = self._commitment_reporter()  # before the listener: config errors first
        self._server = start_listener(
            self.settings,
            self.ingestor,
            self._audit,
            self.telemetry,
            services=self._message_services(),
        )
        if self._reporter is not None:
            self._reporter.start()
        for destination in self.settings.destinations.values():
            breaker = Breaker(
                db=self.db,
                destination=destination.name,
                policy=self.settings.health.policy(destination.name),
                failover=self.settings.health.failover.get(destination.name),
                on_failover=self._wake_destination,
            )
            for index in range(destination.workers):
                worker = DeliveryWorker(
                    destination=destination,
                    sender=TracedSender(
                        with_transform(
                            make_sender(destination, calling_ae_title=self.settings.node.ae_title),
                            self._transformers[destination.name],
                        ),
                        destination=destination.name,
                        kind=destination.type,
                        telemetry=self.telemetry,
                    ),
                    db=self.db,
                    spool=self.spool,
                    delivery=self.settings.delivery,
                    owner=f"{self.instance_name}/{destination.name}/{index}",
                    stop=self._stop,
                    wake=self._wake[destination.name],
                    on_settled=partial(self.telemetry.metrics.settled, destination.name),
                    health=breaker,
                )
                worker.start()
                self._workers.append(worker)
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="housekeeping", daemon=True
        )
        self._housekeeper.start()
        if self.settings.node.http is not None:
            self._start_http()

    def _message_services(self) -> list[Any]:
        commitment = self.settings.dimse.storage_commitment
        if commitment is None:
            return []
        from gateway.dimse.commitment import StorageCommitmentService

        return [
            StorageCommitmentService(commitment, self.db, on_recorded=self._commitment_wake.set)
        ]

    def _commitment_reporter(self) -> Any:
        """Storage commitment reports; pending transactions of earlier runs resume with it."""
        commitment = self.settings.dimse.storage_commitment
        if commitment is None:
            return None
        from gateway.commitment.reporter import CommitmentReporter

        return CommitmentReporter(
            settings=commitment,
            db=self.db,
            owner=f"{self.instance_name}/commitment",
            stop=self._stop,
            wake=self._commitment_wake,
            telemetry=self.telemetry,
        )

    def _start_http(self) -> None:
        import uvicorn

        from gateway.auth.factory import make_verifier
        from gateway.web.app import create_app
        from gateway.web.context import WebContext
        from gateway.web.limits import uvicorn_options

        http = self.settings.node.http
        assert http is not None
        context = WebContext(
            settings=self.settings,
            ingestor=self.ingestor,
            db=self.db,
            spool=self.spool,
            listener_ready=lambda: self._server is not None,
            metrics=self.telemetry.metrics,
        )
        app = self.telemetry.wrap_asgi(create_app(context, make_verifier(self.settings)))
        config = uvicorn.Config(
            app,
            host=http.host,
            port=http.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            **uvicorn_options(self.settings.http.limits),  # sizes, timeouts: web/limits.py
        )
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 15
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError(
                    f"HTTP server could not start on {http.host}:{http.port}; "
                    "is the port in use? change node.http.port"
                )
            time.sleep(0.02)

    @property
    def http_port(self) -> int:
        if self._http is None or not self._http.servers:
            return 0
        return int(self._http.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop accepting, let workers finish their current batch, close everything."""
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        self._commitment_wake.set()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
            self._http = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for worker in self._workers:
            worker.join(timeout=30)
        self._workers.clear()
        if self._reporter is not None:
            self._reporter.join(timeout=30)
            self._reporter = None
        self.telemetry.shutdown()
        self.db.close()

    def _new_work(self, result: IngestResult) -> None:
        """Wake the idle workers of every destination the new instance was routed to."""
        for target in result.decision.targets:
            wake = self._wake.get(target.destination)
            if wake is not None:
                wake.set()

    def _wake_destination(self, name: str) -> None:
        wake = self._wake.get(name)
        if wake is not None:
            wake.set()

    def _audit(self, kind: str, **fields: Any) -> None:
        audit(self.db, kind, **fields)

    def _housekeeping(self) -> None:
        while not self._stop.wait(_HOUSEKEEPING_SECONDS):
            try:
                purge_expired(
                    self.db, self.spool, retention_hours=self.settings.storage.retention_hours
                )
                sweep_staging(
                    self.spool.staging_dir,
                    older_than=max(
                        STAGING_LEFTOVER_SECONDS, 2 * self.settings.dimse.network_timeout
                    ),
                )
            except Exception:
                log.exception("housekeeping failed; will try again")
            if self.settings.audit.retention_days is not None:
                self._prune_audit()

    def _prune_audit(self) -> None:
        """Move expired audit events out (a bounded number of batches; the rest next time)."""
        try:
            run = prune_audit(self.db, self.settings.audit)
        except ArchiveError as exc:
            log.warning("audit retention skipped this pass: %s", exc)
        except Exception:
            log.exception("audit retention failed; will try again")
        else:
            self.telemetry.metrics.audit_pruned(run.moved, archived=run.archived)
