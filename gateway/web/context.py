"""What HTTP handlers may use: the same core services the DIMSE door uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.db import Database
from gateway.exceptions import GatewayError
from gateway.ingest import Ingestor
from gateway.metrics import GatewayMetrics
from gateway.spool import Spool


@dataclass(frozen=True, slots=True, kw_only=True)
class WebContext:
    settings: Settings
    ingestor: Ingestor
    db: Database
    spool: Spool
    listener_ready: Callable[[], bool] = field(default=lambda: True)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics.disabled)

    def readiness_problems(self) -> list[str]:
        problems = []
        for name, check in (("database", self.db.check), ("spool", self.spool.check)):
            try:
                check()
            except GatewayError as exc:
                problems.append(f"{name}: {exc}")
        if not self.listener_ready():
            problems.append("DIMSE listener is not running")
        return problems
