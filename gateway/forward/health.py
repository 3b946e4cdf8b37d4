"""Destination health: a circuit breaker per destination, probes while it is open, failover.

States (persisted in `destination_health`, gateway/db/health.py, so every replica agrees):

* `up`: the last batch was stored in full.
* `degraded`: the peer answers but recent batches partly failed, or fewer than
  `failure_threshold` whole batches in a row failed.
* `down` (breaker open): `failure_threshold` consecutive batches failed as a whole and
  transiently (unreachable, association refused, HTTP 5xx...). Workers stop sending batches;
  every `probe_interval` seconds one worker of one replica sends a probe of one instance. A
  probe the peer answers closes the breaker, and the backlog is sent at once. After
  `failover.after` seconds down, pending deliveries move to the failover destination.

With nothing queued (typically right after failover emptied the queue) there is no instance
to probe with, so the same slot goes to the sender's *idle probe* (gateway/forward/base.py):
C-ECHO, a QIDO-RS request or HeadBucket, no patient data sent. Its `ProbeResult` is recorded
like a batch's signal (`up` -> success, `degraded` -> partial, `down` -> failure), so the
destination comes back by itself when the peer does. A queued instance stays the probe of
choice: storing one proves more than an echo.

Failures of our own making (spool unreadable, a sender bug) say nothing about the
destination and leave its state alone. Transitions are audited and logged once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from gateway.db import Database
from gateway.db.engine import Cursor
from gateway.db.health import (
    Signal,
    Transition,
    claim_probe,
    fail_over,
    has_pending,
    health_row,
    record_signal,
)
from gateway.forward.base import Outcome, ProbeResult, SendResult
from gateway.health_config import FailoverPolicy, HealthPolicy

log = logging.getLogger(__name__)

LOCAL_STATUSES = frozenset({"spool", "internal error", "no result", "transform failed"})
"""Statuses of failures on our side (gateway/forward/worker.py, the senders' spool reads, a
destination's transform, gateway/transform/sender.py)."""
_FOLLOW_ON = "not sent"  # instances after the one that broke the association
_MAX_MOVE_PASSES = 20  # per admit(): at most 20 x 500 deliveries before sending resumes


def signal_of(results: Iterable[SendResult | None]) -> Signal | None:
    """What a batch's results say about the destination; None when they say nothing."""
    relevant = [r for r in results if r is not None and r.status not in LOCAL_STATUSES]
    if not relevant:
        return None
    delivered = sum(1 for r in relevant if r.outcome is Outcome.DELIVERED)
    failed = [r for r in relevant if r.outcome is not Outcome.DELIVERED]
    if not failed:
        return Signal("success", delivered)
    first = next((r for r in failed if r.status != _FOLLOW_ON), failed[0])
    error = f"{first.status} - {first.detail}" if first.detail else first.status
    if delivered == 0 and all(r.outcome is Outcome.TRANSIENT for r in failed):
        return Signal("failure", 0, error)
    return Signal("partial", delivered, error)


def probe_signal(result: ProbeResult) -> Signal:
    """An idle probe's result as the signal a batch would give (module docstring)."""
    error = f"{result.status} - {result.detail}" if result.detail else result.status
    error = f"{error} (idle probe, {result.probe})"
    if result.state == "up":
        return Signal("success", probe=result.probe)
    if result.state == "degraded":
        return Signal("partial", error=error, probe=result.probe)
    return Signal("failure", error=error, probe=result.probe)


class Breaker:
    """The breaker of one destination; shared by its workers, holds no state of its own."""

    def __init__(
        self,
        *,
        db: Database,
        destination: str,
        policy: HealthPolicy,
        failover: FailoverPolicy | None = None,
        on_failover: Callable[[str], None] | None = None,
    ) -> None:
        self._db = db
        self.destination = destination
        self.policy = policy
        self.failover = failover
        self._on_failover = on_failover

    def admit(
        self,
        owner: str,
        batch: int,
        *,
        idle_probe: Callable[[], ProbeResult | None] | None = None,
    ) -> int:
        """How many instances the worker may lease now: `batch`, 1 (a probe) or 0 (wait).

        While the breaker is open this is also where a failover that came due is carried out,
        and where `idle_probe` (the worker's sender's, see the module docstring) runs when a
        probe is due and nothing is queued to probe with.
        """
        row = health_row(self._db, self.destination)
        if row is None or row["state"] != "down":
            return batch
        now = time.time()
        probe_due = row["next_probe_at"] is None or float(row["next_probe_at"]) <= now
        if not has_pending(self._db, self.destination):
            if probe_due and idle_probe is not None:
                self._probe_idle(owner, idle_probe, now)
            return 0
        if probe_due and claim_probe(
            self._db, self.destination, probe_interval=self.policy.probe_interval, now=now
        ):
            log.debug("worker %s: probing %s with one instance", owner, self.destination)
            return 1
        failover = self.failover
        if failover is not None and now - float(row["since"]) >= failover.after:
            self._fail_over(owner, failover)
        return 0

    def _probe_idle(self, owner: str, probe: Callable[[], ProbeResult | None], now: float) -> None:
        """Claim the interval's probe slot (one worker of all replicas wins) and probe."""
        if not claim_probe(
            self._db,
            self.destination,
            probe_interval=self.policy.probe_interval,
            now=now,
            idle=True,
        ):
            return
        try:
            result = probe()
        except Exception:  # a sender bug says nothing about the destination
            log.exception("worker %s: the idle probe of %s raised", owner, self.destination)
            return
        if result is None:
            return  # this sender has no idle probe: wait for work to probe with
        log.debug(
            "worker %s: idle probe of %s: %s %s %s",
            owner,
            self.destination,
            result.probe,
            result.status,
            result.detail,
        )
        signal = probe_signal(result)
        with self._db.transaction() as cur:
            transition = record_signal(
                self._db,
                cur,
                self.destination,
                signal,
                failure_threshold=self.policy.failure_threshold,
                probe_interval=self.policy.probe_interval,
                actor=owner,  # recorded at the time of the answer, not of the claim
            )
        if transition is not None:
            self._log(transition, via=f"idle probe: {result.probe} answered {result.status}")

    def _fail_over(self, owner: str, failover: FailoverPolicy) -> None:
        moved = already = 0
        reason = ""
        for _ in range(_MAX_MOVE_PASSES):
            move = fail_over(
                self._db, self.destination, failover.to, after=failover.after, actor=owner
            )
            moved, already = moved + move.moved, already + move.already_there
            reason = move.reason or reason
            if move.moved + move.already_there == 0:
                break
        if moved + already == 0:
            return
        log.warning(
            "%d deliver%s %s (%d already there, not sent again)",
            moved,
            "y" if moved == 1 else "ies",
            reason.replace("failed over from", f"failed over to {failover.to} from", 1),
            already,
        )
        if moved and self._on_failover is not None:
            self._on_failover(failover.to)

    def observe(
        self, owner: str, results: Iterable[SendResult | None]
    ) -> Callable[[Cursor], Callable[[], None] | None] | None:
        """The hook `settle(then=...)` runs to record this batch; None if it says nothing."""
        signal = signal_of(results)
        if signal is None:
            return None

        def record(cur: Cursor) -> Callable[[], None] | None:
            transition = record_signal(
                self._db,
                cur,
                self.destination,
                signal,
                failure_threshold=self.policy.failure_threshold,
                probe_interval=self.policy.probe_interval,
                actor=owner,
            )
            return None if transition is None else lambda: self._log(transition)

        return record

    def _log(self, change: Transition, via: str = "probed with a queued instance") -> None:
        name = change.destination
        if change.new == "down":
            plan = (
                f"; failing over to {self.failover.to} after {self.failover.after:g}s"
                if self.failover is not None
                else ""
            )
            log.error(
                "destination %s is down after %d consecutive failed batches (last error: %s); "
                "probing every %gs%s",
                name,
                change.failures,
                change.error,
                self.policy.probe_interval,
                plan,
            )
        elif change.old == "down":
            log.warning(
                "destination %s is %s again after %.0fs down (%s)%s",
                name,
                change.new,
                time.time() - change.since,
                via,
                f": {change.error}" if change.new == "degraded" else "",
            )
        elif change.new == "degraded":
            log.warning("destination %s is degraded: %s", name, change.error)
        else:
            log.info("destination %s is up", name)
