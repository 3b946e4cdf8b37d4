"""The delivery queue: lease due work per destination, settle each delivery, report depth.

A lease is a row update (owner + expiry) inside one write transaction, so two workers never
hold the same delivery; a worker that dies simply lets its lease expire. `attempts` is counted
at lease time, so an instance that crashes the worker still reaches its attempt limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.db.engine import Database, Row
from gateway.db.events import record_event


def _due(alias: str = "") -> str:
    """Condition for deliveries of a destination that are due now (params: dest, now, now)."""
    p = f"{alias}." if alias else ""
    return (
        f"{p}destination = ? AND (({p}state = 'pending' AND {p}next_attempt_at <= ?) "
        f"OR ({p}state = 'leased' AND {p}lease_expires_at <= ?))"
    )


@dataclass(frozen=True, slots=True)
class LeasedDelivery:
    delivery_id: int
    attempt: int
    created_at: float
    instance: Row


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """How to settle one leased delivery."""

    delivery_id: int
    state: str  # delivered | pending (retry) | dead
    status: str
    detail: str
    warning: bool = False
    retry_at: float | None = None
    started_at: float
    finished_at: float


def lease_batch(
    db: Database,
    destination: str,
    owner: str,
    *,
    lease_seconds: float,
    max_instances: int,
    max_bytes: int,
    now: float | None = None,
) -> list[LeasedDelivery]:
    """Lease due deliveries of one study for `destination` (oldest, most urgent first)."""
    moment = time.time() if now is None else now
    with db.transaction() as cur:
        first = cur.execute(
            f"SELECT study_instance_uid FROM deliveries WHERE {_due()} "
            f"ORDER BY priority DESC, next_attempt_at, id LIMIT 1{db.skip_locked}",
            (destination, moment, moment),
        ).fetchone()
        if first is None:
            return []
        rows = cur.execute(
            f"SELECT d.id AS delivery_id, d.attempts, d.created_at, i.* FROM deliveries d "
            f"JOIN instances i ON i.id = d.instance_id WHERE {_due('d')} "
            f"AND d.study_instance_uid = ? ORDER BY d.priority DESC, d.next_attempt_at, d.id "
            f"LIMIT ?{db.for_update('d')}",
            (destination, moment, moment, first["study_instance_uid"], max_instances),
        ).fetchall()
        batch: list[Row] = []
        total = 0
        for row in rows:
            if batch and total + int(row["size"]) > max_bytes:
                break
            batch.append(row)
            total += int(row["size"])
        expires = moment + lease_seconds
        cur.executemany(
            "UPDATE deliveries SET state = 'leased', lease_owner = ?, lease_expires_at = ?, "
            "attempts = attempts + 1, updated_at = ? WHERE id = ?",
            [(owner, expires, moment, row["delivery_id"]) for row in batch],
        )
    return [
        LeasedDelivery(
            delivery_id=int(row["delivery_id"]),
            attempt=int(row["attempts"]) + 1,
            created_at=float(row["created_at"]),
            instance=row,
        )
        for row in batch
    ]


def settle(db: Database, owner: str, settlements: Sequence[Settlement]) -> int:
    """Record outcomes of leased deliveries; returns how many were still ours to settle."""
    settled = 0
    with db.transaction() as cur:
        for item in settlements:
            row = cur.execute(
                "SELECT d.attempts, d.destination, i.study_instance_uid, i.sop_instance_uid "
                "FROM deliveries d JOIN instances i ON i.id = d.instance_id "
                "WHERE d.id = ? AND d.state = 'leased' AND d.lease_owner = ?"
                + db.for_update("d", skip_locked=False),
                (item.delivery_id, owner),
            ).fetchone()
            if row is None:
                continue  # lease expired and was taken over, or superseded
            settled += 1
            cur.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempt, worker, started_at, "
                "finished_at, outcome, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.delivery_id,
                    row["attempts"],
                    owner,
                    item.started_at,
                    item.finished_at,
                    item.state,
                    item.status,
                    item.detail,
                ),
            )
            final = item.state in ("delivered", "dead")
            cur.execute(
                "UPDATE deliveries SET state = ?, lease_owner = NULL, lease_expires_at = NULL, "
                "next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ?, "
                "settled_at = ?, last_status = ?, last_detail = ?, warning = ? WHERE id = ?",
                (
                    item.state,
                    item.retry_at,
                    item.finished_at,
                    item.finished_at if final else None,
                    item.status,
                    item.detail,
                    int(item.warning),
                    item.delivery_id,
                ),
            )
            if item.state == "dead":
                record_event(
                    cur,
                    "delivery.dead",
                    outcome="dead",
                    actor=owner,
                    study_uid=row["study_instance_uid"],
                    sop_uid=row["sop_instance_uid"],
                    detail={
                        "destination": row["destination"],
                        "status": item.status,
                        "reason": item.detail,
                        "attempts": row["attempts"],
                    },
                )
    return settled


def release(db: Database, owner: str, delivery_ids: Sequence[int]) -> None:
    """Give leased deliveries back without counting an attempt (clean shutdown)."""
    with db.transaction() as cur:
        cur.executemany(
            "UPDATE deliveries SET state = 'pending', lease_owner = NULL, "
            "lease_expires_at = NULL, "
            "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
            "WHERE id = ? AND state = 'leased' AND lease_owner = ?",
            [(delivery_id, owner) for delivery_id in delivery_ids],
        )


def queue_summary(db: Database, *, now: float | None = None) -> list[Row]:
    """Depth and oldest age per destination and state."""
    moment = time.time() if now is None else now
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT destination, state, COUNT(*) AS count, ? - MIN(created_at) AS oldest_age, "
            "MIN(next_attempt_at) AS next_attempt_at FROM deliveries "
            "GROUP BY destination, state ORDER BY destination, state",
            (moment,),
        ).fetchall()


def requeue_dead(
    db: Database, destination: str, *, study_uid: str | None = None, actor: str = "cli"
) -> int:
    """Put dead deliveries of a destination (optionally one study) back in the queue."""
    moment = time.time()
    study_clause = " AND study_instance_uid = ?" if study_uid else ""
    params: tuple[object, ...] = (moment, moment, destination) + ((study_uid,) if study_uid else ())
    with db.transaction() as cur:
        count = cur.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            "settled_at = NULL, updated_at = ? WHERE state = 'dead' AND destination = ?"
            + study_clause,
            params,
        ).rowcount
        record_event(
            cur,
            "delivery.retry",
            outcome="requeued",
            actor=actor,
            study_uid=study_uid,
            detail={"destination": destination, "count": count},
        )
    return count


def deliveries_of_study(db: Database, study_uid: str) -> list[Row]:
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT d.*, i.sop_instance_uid, i.series_instance_uid FROM deliveries d "
            "JOIN instances i ON i.id = d.instance_id WHERE d.study_instance_uid = ? "
            "ORDER BY i.series_instance_uid, i.id, d.destination, d.id",
            (study_uid,),
        ).fetchall()


def attempts_of(db: Database, delivery_ids: Sequence[int]) -> list[Row]:
    if not delivery_ids:
        return []
    marks = ", ".join("?" for _ in delivery_ids)
    with db.transaction(write=False) as cur:
        return cur.execute(
            f"SELECT * FROM delivery_attempts WHERE delivery_id IN ({marks}) ORDER BY id",
            tuple(delivery_ids),
        ).fetchall()
