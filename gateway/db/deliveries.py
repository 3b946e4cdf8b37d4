"""The delivery queue: lease due work per destination, settle each delivery, report depth.

A lease is a row update (owner + expiry) inside one write transaction, so two workers never
hold the same delivery; a worker that dies simply lets its lease expire. `attempts` is counted
at lease time, so an instance that crashes the worker still reaches its attempt limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.db.engine import Cursor, Database, Row
from gateway.db.events import record_event

# What a sender needs of an instance (not the indexed attributes or the header JSON).
_SENT_COLUMNS = (
    "i.id, i.sop_instance_uid, i.sop_class_uid, i.study_instance_uid, i.series_instance_uid, "
    "i.transfer_syntax_uid, i.spool_key, i.size, i.received_at, i.trace_context, i.sha256"
)
# Bound parameters per statement stay well below SQLite's (32766) and PostgreSQL's limits.
_IDS_PER_STATEMENT = 500


def _due(alias: str = "") -> str:
    """Condition for deliveries of a destination that are due now (params: dest, now, now)."""
    p = f"{alias}." if alias else ""
    return (
        f"{p}destination = ? AND (({p}state = 'pending' AND {p}next_attempt_at <= ?) "
        f"OR ({p}state = 'leased' AND {p}lease_expires_at <= ?))"
    )


@dataclass(frozen=True, slots=True)
class LeasedDelivery:
    """A delivery leased to one worker; `instance` holds the instance columns a sender needs."""

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
            f"SELECT d.id AS delivery_id, d.attempts, d.created_at, {_SENT_COLUMNS} "
            f"FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE {_due('d')} "
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


def due_times(
    db: Database, destination: str, *, now: float | None = None
) -> tuple[float, float] | None:
    """When the longest-waiting and the latest pending delivery of `destination` became due.

    None when nothing is pending and due. Two index lookups in a read transaction (no write
    lock); expired leases are not counted.
    """
    moment = time.time() if now is None else now
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT MIN(next_attempt_at) AS oldest, MAX(next_attempt_at) AS latest "
            "FROM deliveries WHERE destination = ? AND state = 'pending' "
            "AND next_attempt_at <= ?",
            (destination, moment),
        ).fetchone()
    if row is None or row["oldest"] is None:
        return None
    return float(row["oldest"]), float(row["latest"])


def settle(
    db: Database,
    owner: str,
    settlements: Sequence[Settlement],
    *,
    then: Callable[[Cursor], Callable[[], None] | None] | None = None,
) -> int:
    """Record outcomes of leased deliveries; returns how many were still ours to settle.

    A whole batch is settled in one transaction with one statement of each kind, not three
    per delivery: the write lock it holds is the one ingest waits for. `then` runs last in
    the same transaction (the destination's health, gateway/db/health.py); what it returns
    runs after the commit.
    """
    settlements = _first_of_each(settlements)
    after: Callable[[], None] | None = None
    with db.transaction() as cur:
        held: dict[int, Row] = {}
        for start in range(0, len(settlements), _IDS_PER_STATEMENT):
            ids = [item.delivery_id for item in settlements[start : start + _IDS_PER_STATEMENT]]
            for row in cur.execute(
                "SELECT d.id, d.attempts, d.destination, i.study_instance_uid, "
                "i.sop_instance_uid FROM deliveries d JOIN instances i ON i.id = d.instance_id "
                f"WHERE d.id IN ({', '.join('?' for _ in ids)}) AND d.state = 'leased' "
                "AND d.lease_owner = ?" + db.for_update("d", skip_locked=False),
                (*ids, owner),
            ).fetchall():
                held[int(row["id"])] = row
        # Leases that expired and were taken over, or were superseded, are not ours any more.
        ours = [item for item in settlements if item.delivery_id in held]
        cur.executemany(
            "INSERT INTO delivery_attempts (delivery_id, attempt, worker, started_at, "
            "finished_at, outcome, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    item.delivery_id,
                    held[item.delivery_id]["attempts"],
                    owner,
                    item.started_at,
                    item.finished_at,
                    item.state,
                    item.status,
                    item.detail,
                )
                for item in ours
            ],
        )
        cur.executemany(
            "UPDATE deliveries SET state = ?, lease_owner = NULL, lease_expires_at = NULL, "
            "next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ?, "
            "settled_at = ?, last_status = ?, last_detail = ?, warning = ? WHERE id = ?",
            [
                (
                    item.state,
                    item.retry_at,
                    item.finished_at,
                    item.finished_at if item.state in ("delivered", "dead") else None,
                    item.status,
                    item.detail,
                    int(item.warning),
                    item.delivery_id,
                )
                for item in ours
            ],
        )
        for item in ours:
            if item.state == "dead":
                row = held[item.delivery_id]
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
        if then is not None:
            after = then(cur)
    if after is not None:
        after()
    return len(ours)


def _first_of_each(settlements: Sequence[Settlement]) -> list[Settlement]:
    """One settlement per delivery (the first): a delivery is settled once per lease."""
    seen: set[int] = set()
    unique = []
    for item in settlements:
        if item.delivery_id not in seen:
            seen.add(item.delivery_id)
            unique.append(item)
    return unique


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
    return requeue(db, destination, "dead", study_uid=study_uid, actor=actor)


def requeue(
    db: Database,
    destination: str,
    state: str,
    *,
    study_uid: str | None = None,
    actor: str = "cli",
    note: str | None = None,
) -> int:
    """Deliveries of `destination` in a settled `state` (dead, failed_over) queued again with
    a fresh attempt budget; `note` is put before the delivery's note. Audited once."""
    moment = time.time()
    study_clause = " AND study_instance_uid = ?" if study_uid else ""
    note_clause = ", note = ? || COALESCE(note, '')" if note is not None else ""
    params: tuple[object, ...] = (
        (moment, moment)
        + ((note,) if note is not None else ())
        + (state, destination)
        + ((study_uid,) if study_uid else ())
    )
    with db.transaction() as cur:
        count = cur.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            f"settled_at = NULL, updated_at = ?{note_clause} "
            "WHERE state = ? AND destination = ?" + study_clause,
            params,
        ).rowcount
        detail: dict[str, object] = {"destination": destination, "count": count}
        if state != "dead":
            detail["from_state"] = state
        record_event(
            cur,
            "delivery.retry",
            outcome="requeued",
            actor=actor,
            study_uid=study_uid,
            detail=detail,
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
