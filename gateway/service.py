"""The running gateway: wires spool, database, ingest, the DIMSE listener and the workers.

Concurrency model (see docs/architecture.md): the core (ingest, database, spool) is synchronous
and thread-safe. pynetdicom runs each association in its own thread and calls ingest directly;
each destination has `workers` delivery threads; a housekeeping thread purges expired bytes.
The HTTP front end runs on one asyncio loop and calls the same core through worker threads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from gateway.config import Settings
from gateway.db import Database, open_database
from gateway.db.events import audit
from gateway.forward.factory import make_sender
from gateway.forward.worker import DeliveryWorker
from gateway.ingest import Ingestor
from gateway.retention import purge_expired
from gateway.spool import Spool, open_spool

log = logging.getLogger(__name__)

_HOUSEKEEPING_SECONDS = 60.0


class Gateway:
    """One gateway process; `start()` returns once the DIMSE listener accepts connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.spool: Spool = open_spool(settings.storage.spool)
        self.db: Database = open_database(settings.storage.database)
        self.ingestor = Ingestor(settings, self.spool, self.db)
        self._stop = threading.Event()
        self._workers: list[DeliveryWorker] = []
        self._server: Any = None
        self._housekeeper: threading.Thread | None = None
        self.instance_name = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def dimse_port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else 0

    def start(self) -> None:
        from gateway.dimse.ae import start_listener

        self._server = start_listener(self.settings, self.ingestor, self._audit)
        for destination in self.settings.destinations.values():
            for index in range(destination.workers):
                worker = DeliveryWorker(
                    destination=destination,
                    sender=make_sender(destination, calling_ae_title=self.settings.node.ae_title),
                    db=self.db,
                    spool=self.spool,
                    delivery=self.settings.delivery,
                    owner=f"{self.instance_name}/{destination.name}/{index}",
                    stop=self._stop,
                )
                worker.start()
                self._workers.append(worker)
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="housekeeping", daemon=True
        )
        self._housekeeper.start()

    def stop(self) -> None:
        """Stop accepting, let workers finish their current batch, close everything."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for worker in self._workers:
            worker.join(timeout=30)
        self._workers.clear()
        self.db.close()

    def _audit(self, kind: str, **fields: Any) -> None:
        audit(self.db, kind, **fields)

    def _housekeeping(self) -> None:
        while not self._stop.wait(_HOUSEKEEPING_SECONDS):
            try:
                purge_expired(
                    self.db, self.spool, retention_hours=self.settings.storage.retention_hours
                )
            except Exception:
                log.exception("housekeeping failed; will try again")
