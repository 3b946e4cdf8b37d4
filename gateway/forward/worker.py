"""Delivery workers: lease a batch, send it, settle each delivery. One thread per worker.

A worker never loses track of a delivery: whatever the sender does (returns, raises, hangs
until its own timeouts), every leased delivery is settled, released at shutdown, or left to
expire its lease so another worker takes it over after a crash.

Batches are gathered as Nagle's algorithm gathers bytes: while the oldest due delivery has
waited less than ``linger`` seconds and new instances keep arriving (a study coming in over
an association), the worker waits before leasing, so a study received at 250 instances/s
travels in a few requests of tens of instances instead of one request of two or three every
few milliseconds. Each request costs a lease and a settle transaction (each a commit that
holds the database write lock ingest also needs) and the destination's per-request work, so
small batches slow both legs of a bridge. A backlog is leased at once (its oldest delivery
has waited long enough), and so is work once ``quiet`` seconds pass without a new arrival:
a lone instance or the end of a study waits at most that long, not ``linger``. Gathering
changes only when a batch is leased; each instance is still settled on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from gateway.config import DeliverySettings, Destination
from gateway.db import Database
from gateway.db.deliveries import (
    LeasedDelivery,
    Settlement,
    due_times,
    lease_batch,
    release,
    settle,
)
from gateway.exceptions import GatewayError
from gateway.forward.backoff import give_up_reason, retry_delay
from gateway.forward.base import (
    Outcome,
    OutgoingInstance,
    ProbeResult,
    Sender,
    SendResult,
    idle_probe,
)
from gateway.forward.health import Breaker
from gateway.spool import Spool

log = logging.getLogger(__name__)


class DeliveryWorker:
    """Drives one sender for one destination until stopped."""

    def __init__(
        self,
        *,
        destination: Destination,
        sender: Sender,
        db: Database,
        spool: Spool,
        delivery: DeliverySettings,
        owner: str,
        stop: threading.Event,
        wake: threading.Event | None = None,
        on_settled: Callable[[Sequence[Settlement]], None] | None = None,
        linger: float | None = None,
        quiet: float | None = None,
        health: Breaker | None = None,
    ) -> None:
        self._destination = destination
        self._sender = sender
        self._db = db
        self._spool = spool
        self._delivery = delivery
        self.owner = owner
        self._stop = stop
        # Set when new work for this destination was committed (or at shutdown), so an idle
        # worker starts at once instead of at its next poll; polling still covers work
        # committed by other replicas and retries coming due.
        self._wake = wake if wake is not None else stop
        self._on_settled = on_settled
        # None: as configured (`delivery.linger`, `delivery.quiet`)
        self._linger = delivery.linger if linger is None else linger
        self._quiet = delivery.quiet if quiet is None else quiet
        self._health = health  # the destination's circuit breaker (gateway/forward/health.py)
        self._thread = threading.Thread(target=self._run, name=owner, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        log.info("worker %s started", self.owner)
        idle = self._delivery.poll_interval
        while not self._stop.is_set():
            try:
                self._gather()
                worked = self.run_once()
            except GatewayError as exc:
                log.error("worker %s: %s", self.owner, exc)
                worked = False
            except Exception:
                log.exception("worker %s: unexpected error", self.owner)
                worked = False
            if not worked:
                self._wake.wait(idle)
                if self._wake is not self._stop:
                    self._wake.clear()
        self._sender.close()
        log.info("worker %s stopped", self.owner)

    def run_once(self) -> bool:
        """Lease, send and settle one batch; False when nothing was due."""
        destination = self._destination
        limit = destination.max_batch_instances
        if self._health is not None:
            # 1: a probe; 0: the breaker is open (and, with nothing queued, it may have run
            # this worker's sender's idle probe)
            limit = self._health.admit(self.owner, limit, idle_probe=self._idle_probe)
            if limit == 0:
                return False
        leased = lease_batch(
            self._db,
            destination.name,
            self.owner,
            lease_seconds=self._delivery.lease_seconds,
            max_instances=limit,
            max_bytes=destination.max_batch_bytes,
        )
        if not leased:
            return False
        if self._stop.is_set():
            release(self._db, self.owner, [item.delivery_id for item in leased])
            return False
        started = time.time()
        results = self._send(leased)
        finished = time.time()
        settlements = [
            self._settlement(item, results.get(item.delivery_id), started, finished)
            for item in leased
        ]
        health = self._health.observe(self.owner, results.values()) if self._health else None
        settle(self._db, self.owner, settlements, then=health)
        if self._on_settled is not None:
            self._on_settled(settlements)
        return True

    def _idle_probe(self) -> ProbeResult | None:
        return idle_probe(self._sender)

    def _gather(self) -> None:
        """Before a lease, wait while due work is young and more keeps arriving (see above)."""
        if self._linger <= 0:
            return
        now = time.time()
        due = due_times(self._db, self._destination.name, now=now)
        if due is None:
            return
        oldest, latest = due
        if now - oldest >= self._linger or now - latest >= self._quiet:
            return  # it has waited long enough, or arrivals have paused
        deadline = time.monotonic() + (oldest + self._linger - now)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Look for arrivals every `quiet` seconds rather than wait for each one: a worker
            # woken once per stored instance would take the GIL from ingest every time.
            if self._wake is not self._stop:
                self._wake.clear()
            if self._stop.wait(min(remaining, self._quiet)) or not self._wake.is_set():
                return  # stopping, or nothing new for a while: arrivals paused or ended

    def _send(self, leased: Sequence[LeasedDelivery]) -> dict[int, SendResult]:
        batch = [self._outgoing(item) for item in leased]
        try:
            results = self._sender.send(batch)
        except Exception as exc:  # a sender bug must not strand the batch
            log.exception("sender %s raised", self._destination.name)
            return {
                item.delivery_id: SendResult(
                    item.delivery_id,
                    Outcome.TRANSIENT,
                    "internal error",
                    f"{type(exc).__name__}: {exc}",
                )
                for item in batch
            }
        return {result.delivery_id: result for result in results}

    def _outgoing(self, item: LeasedDelivery) -> OutgoingInstance:
        row = item.instance
        key = str(row["spool_key"])
        return OutgoingInstance(
            delivery_id=item.delivery_id,
            study_instance_uid=row["study_instance_uid"],
            series_instance_uid=row["series_instance_uid"],
            sop_instance_uid=row["sop_instance_uid"],
            sop_class_uid=row["sop_class_uid"],
            transfer_syntax_uid=row["transfer_syntax_uid"],
            size=int(row["size"]),
            open=lambda: self._spool.open(key),
            local_file=lambda: self._spool.local_file(key),
            trace_context=row.get("trace_context"),
            received_at=row.get("received_at"),
            sha256=row.get("sha256"),
        )

    def _settlement(
        self, item: LeasedDelivery, result: SendResult | None, started: float, finished: float
    ) -> Settlement:
        if result is None:
            result = SendResult(
                item.delivery_id,
                Outcome.TRANSIENT,
                "no result",
                "the sender returned no result for this instance",
            )

        def settled(state: str, detail: str, retry_at: float | None = None) -> Settlement:
            assert result is not None
            return Settlement(
                delivery_id=item.delivery_id,
                state=state,
                status=result.status,
                detail=detail,
                warning=result.warning,
                retry_at=retry_at,
                started_at=started,
                finished_at=finished,
            )

        if result.outcome is Outcome.DELIVERED:
            return settled("delivered", result.detail)
        if result.outcome is Outcome.PERMANENT:
            return settled("dead", result.detail)
        policy = self._destination.retry
        reason = give_up_reason(
            policy, attempt=item.attempt, age_seconds=finished - item.created_at
        )
        if reason is not None:
            return settled("dead", f"{result.detail}; {reason}")
        return settled(
            "pending", result.detail, retry_at=finished + retry_delay(policy, item.attempt)
        )
