"""The gateway's metrics: one set of OpenTelemetry instruments, read by Prometheus and OTLP.

Why OpenTelemetry instruments with the OpenTelemetry Prometheus reader (rather than
prometheus-client instruments): every number is defined once and `/metrics` and the OTLP
export show the same data points. The reader renders through prometheus-client's own
exposition code into a registry owned by this gateway (no process-global registry), and it
comes from the same 0.66b2 release line as the ASGI and httpx instrumentations, pinned to the
same SDK. Gauges are observed when someone reads them (a scrape or an OTLP export), from one
query of the delivery queue: the depth gauge (read first) queries, and the oldest-age gauge reuses
that answer when it is under a second old.

Prometheus names are the OpenTelemetry names with dots as underscores, the unit as a suffix
and `_total` on counters (`gateway.deliveries.delivered` -> `gateway_deliveries_delivered_total`);
docs/observability.md lists them all.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from prometheus_client import CollectorRegistry, generate_latest

from gateway.db import Database
from gateway.db.deliveries import Settlement, queue_summary
from gateway.db.health import health_rows
from gateway.spool import Spool

log = logging.getLogger(__name__)

QUEUE_STATES = ("pending", "leased", "dead")
"""States whose depth and oldest age are gauges; delivered and superseded rows are history."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SNAPSHOT_SECONDS = 1.0  # how long the oldest-age gauge may reuse the depth gauge's query


class GatewayMetrics:
    """Instruments of one gateway; `observe()` binds the gauges to its database and spool."""

    def __init__(self, meter: Meter, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry
        self._received = meter.create_counter(
            "gateway.instances.received",
            unit="{instance}",
            description="Instances made durable, by door (dimse, stowrs) and calling AE title",
        )
        self._refused = meter.create_counter(
            "gateway.instances.refused",
            unit="{instance}",
            description="Instances refused at ingest (unreadable, invalid UID, storage down)",
        )
        self._delivered = meter.create_counter(
            "gateway.deliveries.delivered",
            unit="{delivery}",
            description="Deliveries the destination acknowledged",
        )
        self._failed = meter.create_counter(
            "gateway.deliveries.failed",
            unit="{delivery}",
            description="Failed delivery attempts (retried or dead-lettered)",
        )
        self._retried = meter.create_counter(
            "gateway.deliveries.retried",
            unit="{delivery}",
            description="Failed attempts scheduled for another try",
        )
        self._dead = meter.create_counter(
            "gateway.deliveries.dead",
            unit="{delivery}",
            description="Deliveries dead-lettered (permanent refusal or retry budget spent)",
        )
        self._latency = meter.create_histogram(
            "gateway.delivery.latency",
            unit="s",
            description="Time from receipt to the destination's acknowledgement",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._attempt = meter.create_histogram(
            "gateway.delivery.attempt.duration",
            unit="s",
            description="Duration of one delivery attempt (one request or association)",
            explicit_bucket_boundaries_advisory=ATTEMPT_BUCKETS,
        )
        self._audit_pruned = meter.create_counter(
            "gateway.audit.events.pruned",
            unit="{event}",
            description="Audit events moved out of the database by audit.retention_days "
            "(archived: true when a copy went to audit.archive_dir first)",
        )
        self._meter = meter
        self._lock = threading.Lock()
        self._snapshot: tuple[float, list[Any]] | None = None
        self._health_snapshot: tuple[float, list[Any]] | None = None
        self._db: Database | None = None
        self._spool: Spool | None = None
        self._destinations: tuple[str, ...] = ()

    @classmethod
    def disabled(cls) -> GatewayMetrics:
        """Instruments that record nothing (no telemetry configured, or unit tests)."""
        return cls(NoOpMeterProvider().get_meter("gateway"))

    # -- recording ---------------------------------------------------------------------------

    def received(self, door: str, calling_ae: str | None) -> None:
        self._received.add(1, {"door": door, "calling_ae": calling_ae or ""})

    def refused(self, door: str) -> None:
        self._refused.add(1, {"door": door})

    def attempt(self, destination: str, outcome: str, seconds: float) -> None:
        """One instance's share of an attempt (outcome: delivered, transient, permanent)."""
        self._attempt.record(max(seconds, 0.0), {"destination": destination, "outcome": outcome})

    def delivered_after(self, destination: str, seconds: float) -> None:
        self._latency.record(max(seconds, 0.0), {"destination": destination})

    def settled(self, destination: str, settlements: Sequence[Settlement]) -> None:
        """Count the outcome of settled deliveries (the worker's `on_settled` hook)."""
        labels = {"destination": destination}
        for item in settlements:
            if item.state == "delivered":
                self._delivered.add(1, labels)
                continue
            self._failed.add(1, labels)
            if item.state == "dead":
                self._dead.add(1, labels)
            else:
                self._retried.add(1, labels)

    def audit_pruned(self, count: int, *, archived: bool) -> None:
        """Count audit events housekeeping moved out of the database."""
        if count:
            self._audit_pruned.add(count, {"archived": "true" if archived else "false"})

    # -- gauges ------------------------------------------------------------------------------

    def observe(self, db: Database, spool: Spool, destinations: Iterable[str]) -> None:
        """Create the gauges; they query `db` and the spool's disk when read."""
        self._db, self._spool = db, spool
        self._destinations = tuple(destinations)
        self._meter.create_observable_gauge(
            "gateway.queue.depth",
            callbacks=[self._observe_depth],
            unit="{delivery}",
            description="Deliveries per destination and state (pending, leased, dead)",
        )
        self._meter.create_observable_gauge(
            "gateway.queue.oldest_age",
            callbacks=[self._observe_oldest],
            unit="s",
            description="Age of the oldest delivery per destination and state",
        )
        self._meter.create_observable_gauge(
            "gateway.destination.up",
            callbacks=[self._observe_up],
            unit="{destination}",
            description="1 while the destination's circuit breaker is closed (up or degraded), "
            "0 while it is down",
        )
        self._meter.create_observable_gauge(
            "gateway.destination.consecutive_failures",
            callbacks=[self._observe_failures],
            unit="{batch}",
            description="Batches in a row that failed as a whole (0 after a success)",
        )
        self._meter.create_observable_gauge(
            "gateway.spool.disk.used",
            callbacks=[self._disk("used")],
            unit="By",
            description="Bytes used on the file system holding the spool's staging folder",
        )
        self._meter.create_observable_gauge(
            "gateway.spool.disk.free",
            callbacks=[self._disk("free")],
            unit="By",
            description="Bytes free on the file system holding the spool's staging folder",
        )

    def _queue_rows(self, *, fresh: bool) -> list[Any]:
        with self._lock:
            now = time.monotonic()
            snapshot = self._snapshot
            if not fresh and snapshot is not None and now - snapshot[0] < _SNAPSHOT_SECONDS:
                return snapshot[1]
            rows: list[Any] = []
            if self._db is not None:
                try:
                    rows = list(queue_summary(self._db))
                except Exception as exc:  # a scrape must not fail because the db is busy
                    log.warning("queue gauges: could not read the queue: %s", exc)
            self._snapshot = (now, rows)
            return rows

    def _queue_values(self, column: str, *, fresh: bool) -> list[Observation]:
        values: dict[tuple[str, str], float] = {
            (name, state): 0.0 for name in self._destinations for state in QUEUE_STATES
        }
        for row in self._queue_rows(fresh=fresh):
            key = (str(row["destination"]), str(row["state"]))
            if key[1] in QUEUE_STATES:
                values[key] = float(row[column] or 0)
        return [
            Observation(value, {"destination": name, "state": state})
            for (name, state), value in sorted(values.items())
        ]

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._queue_values("count", fresh=True)

    def _observe_oldest(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._queue_values("oldest_age", fresh=False)

    def _health_values(self, *, fresh: bool) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            snapshot = self._health_snapshot
            if fresh or snapshot is None or now - snapshot[0] >= _SNAPSHOT_SECONDS:
                rows: list[Any] = []
                if self._db is not None:
                    try:
                        rows = health_rows(self._db)
                    except Exception as exc:  # a scrape must not fail because the db is busy
                        log.warning("health gauges: could not read destination health: %s", exc)
                snapshot = self._health_snapshot = (now, rows)
        by_name = {str(row["destination"]): row for row in snapshot[1]}
        return {name: by_name.get(name) for name in self._destinations}

    def _observe_up(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(0 if row is not None and row["state"] == "down" else 1, {"destination": n})
            for n, row in sorted(self._health_values(fresh=True).items())
        ]

    def _observe_failures(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                int(row["consecutive_failures"]) if row is not None else 0, {"destination": n}
            )
            for n, row in sorted(self._health_values(fresh=False).items())
        ]

    def _disk(self, which: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self._spool is None:
                return []
            try:
                usage = shutil.disk_usage(self._spool.staging_dir)
            except OSError:
                return []
            return [Observation(usage.used if which == "used" else usage.free)]

        return observe

    # -- exposition --------------------------------------------------------------------------

    def prometheus_text(self) -> bytes:
        """The Prometheus text exposition of every instrument (collects gauges now)."""
        if self.registry is None:
            return b""
        return generate_latest(self.registry)
