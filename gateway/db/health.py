"""Destination health in the database: breaker state, probe claims and failover moves.

One `destination_health` row per destination is the state every replica reads and writes, so
two replicas always agree whether a destination is `up`, `degraded` or `down`:

* `record_signal` runs inside the transaction that settles a batch (`settle(then=...)`) and
  moves the state; a transition to or from `down` writes one audit event in that transaction.
* `claim_probe` lets exactly one worker (of any replica) send the next probe while `down`:
  one queued instance, or, with nothing queued, an idle probe (C-ECHO, QIDO-RS, HeadBucket).
* `fail_over` moves pending deliveries of a destination down for too long to its failover
  target: each original settles as `failed_over` and one new delivery for the target is
  created in the same transaction (or none, when the target already has the instance).

Locking (PostgreSQL): a transaction that needs a destination's row lock takes it before any
delivery row it waits for; a move locks its source's row, then its target's (the failover
graph has no cycles, so neither can the waits), and selects the deliveries it moves with
SKIP LOCKED, so a delivery being leased is never moved. SQLite serialises writers instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.db.deliveries import requeue
from gateway.db.engine import Cursor, Database, Row
from gateway.db.events import record_event

STATES = ("up", "degraded", "down")
_SUCCESS_RESOLUTION = 1.0  # seconds: `last_success_at` is refreshed at most this often
_MOVE_BATCH = 500
_IDS_PER_STATEMENT = 500


@dataclass(frozen=True, slots=True)
class Signal:
    """What one settled batch says about its destination.

    `failure`: every instance failed transiently (the peer unreachable, refusing associations
    or answering 5xx/0xA7xx); `partial`: the peer answered but not every instance was stored;
    `success`: every instance was stored. `probe` names the idle probe ("C-ECHO"...) when the
    signal comes from one rather than from a batch; its success counts as a last success.
    """

    kind: Literal["success", "partial", "failure"]
    delivered: int = 0
    error: str | None = None
    probe: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    destination: str
    old: str
    new: str
    failures: int
    error: str | None
    since: float  # when the old state began


@dataclass(frozen=True, slots=True)
class Move:
    """One failover pass: deliveries moved, and those whose target already had the instance."""

    moved: int = 0
    already_there: int = 0
    reason: str = ""


def health_rows(db: Database) -> list[Row]:
    with db.transaction(write=False) as cur:
        return cur.execute("SELECT * FROM destination_health ORDER BY destination").fetchall()


def health_row(db: Database, destination: str) -> Row | None:
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT * FROM destination_health WHERE destination = ?", (destination,)
        ).fetchone()


# Work waiting for a destination: pending, or leased by a worker that died (lease expired).
# A delivery whose lease is current is being sent (or is the probe) and is never moved.
_WAITING = "(state = 'pending' OR (state = 'leased' AND lease_expires_at <= ?))"


def has_pending(db: Database, destination: str, *, now: float | None = None) -> bool:
    moment = time.time() if now is None else now
    with db.transaction(write=False) as cur:
        row = cur.execute(
            f"SELECT id FROM deliveries WHERE destination = ? AND {_WAITING} LIMIT 1",
            (destination, moment),
        ).fetchone()
    return row is not None


def _ensure(cur: Cursor, destination: str, now: float) -> None:
    cur.execute(
        "INSERT INTO destination_health (destination, state, since, consecutive_failures, "
        "updated_at) VALUES (?, 'up', ?, 0, ?) ON CONFLICT (destination) DO NOTHING",
        (destination, now, now),
    )


def _locked(db: Database, cur: Cursor, destination: str, now: float) -> Row:
    _ensure(cur, destination, now)
    row = cur.execute(
        "SELECT * FROM destination_health WHERE destination = ?" + db.for_update(skip_locked=False),
        (destination,),
    ).fetchone()
    assert row is not None
    return row


def record_signal(
    db: Database,
    cur: Cursor,
    destination: str,
    signal: Signal,
    *,
    failure_threshold: int,
    probe_interval: float,
    actor: str,
    now: float | None = None,
) -> Transition | None:
    """Move the destination's state for one batch's `signal`; the transition, if any."""
    moment = time.time() if now is None else now
    row = cur.execute(
        "SELECT * FROM destination_health WHERE destination = ?", (destination,)
    ).fetchone()
    if signal.kind == "success" and (
        row is None or (row["state"] == "up" and int(row["consecutive_failures"]) == 0)
    ):
        # The common case changes nothing but the time of the last success.
        if row is None:
            _ensure(cur, destination, moment)
        last = None if row is None else row["last_success_at"]
        if last is None or moment - float(last) >= _SUCCESS_RESOLUTION:
            cur.execute(
                "UPDATE destination_health SET last_success_at = ?, updated_at = ? "
                "WHERE destination = ? AND state = 'up' AND consecutive_failures = 0",
                (moment, moment, destination),
            )
        return None
    row = _locked(db, cur, destination, moment)
    old = str(row["state"])
    failures = int(row["consecutive_failures"])
    if signal.kind == "failure":
        failures += 1
        new = "down" if old == "down" or failures >= failure_threshold else "degraded"
    else:
        failures = 0
        new = "up" if signal.kind == "success" else "degraded"
    since = float(row["since"]) if new == old else moment
    if new != "down":
        next_probe = None
    elif old != "down":
        next_probe = moment + probe_interval
    else:
        next_probe = row["next_probe_at"]
    error = signal.error or row["last_error"]
    answered = signal.probe is not None and signal.kind == "success"
    cur.execute(
        "UPDATE destination_health SET state = ?, since = ?, consecutive_failures = ?, "
        "last_error = ?, last_error_at = ?, last_success_at = ?, next_probe_at = ?, "
        "updated_at = ? WHERE destination = ?",
        (
            new,
            since,
            failures,
            error,
            moment if signal.error else row["last_error_at"],
            moment if signal.delivered or answered else row["last_success_at"],
            next_probe,
            moment,
            destination,
        ),
    )
    if new == "down" and old != "down":
        record_event(
            cur,
            "destination.down",
            outcome="down",
            actor=destination,  # `dicom-gateway audit --actor NAME` finds its transitions
            detail={
                "destination": destination,
                "observed_by": actor,
                "consecutive_failures": failures,
                "last_error": error,
                "previous_state": old,
            },
            at=moment,
        )
    elif old == "down" and new != "down":
        record_event(
            cur,
            "destination.up",
            outcome=new,
            actor=destination,
            detail={
                "destination": destination,
                "observed_by": actor,
                "down_since": row["since"],
                "down_seconds": round(moment - float(row["since"]), 3),
                "last_error": row["last_error"],
                # how it was noticed: None for a delivered instance, else the idle probe
                "probe": signal.probe,
            },
            at=moment,
        )
        # The backlog waited for the breaker, not for its backoff: send it now.
        cur.execute(
            "UPDATE deliveries SET next_attempt_at = ? WHERE destination = ? "
            "AND state = 'pending' AND next_attempt_at > ?",
            (moment, destination, moment),
        )
    if new == old:
        return None
    return Transition(destination, old, new, failures, error, float(row["since"]))


def claim_probe(
    db: Database,
    destination: str,
    *,
    probe_interval: float,
    now: float | None = None,
    idle: bool = False,
) -> bool:
    """Claim the next probe of a `down` destination; True for exactly one caller per interval.

    The claim makes the longest-waiting pending delivery due now (its backoff may reach far
    beyond the probe), so the caller's next lease of one instance finds it. Without pending
    work there is nothing to probe with and nothing is claimed. With `idle` it is the other
    way round: the interval is claimed for an idle probe (one without an instance) only while
    nothing is queued; instances and idle probes share the one slot per interval.
    """
    moment = time.time() if now is None else now
    with db.transaction() as cur:
        row = cur.execute(
            "SELECT state, next_probe_at FROM destination_health WHERE destination = ?"
            + db.for_update(),
            (destination,),
        ).fetchone()
        if row is None or row["state"] != "down":
            return False
        if row["next_probe_at"] is not None and float(row["next_probe_at"]) > moment:
            return False
        pick = cur.execute(
            f"SELECT id FROM deliveries WHERE destination = ? AND {_WAITING} "
            "ORDER BY priority DESC, next_attempt_at, id LIMIT 1" + db.for_update(),
            (destination, moment),
        ).fetchone()
        if (pick is None) != idle:
            # idle but work arrived meanwhile: leave the slot to a probe with that instance
            return False
        if pick is not None:
            cur.execute(
                "UPDATE deliveries SET next_attempt_at = ? WHERE id = ? AND next_attempt_at > ?",
                (moment, pick["id"], moment),
            )
        cur.execute(
            "UPDATE destination_health SET next_probe_at = ?, updated_at = ? WHERE destination = ?",
            (moment + probe_interval, moment, destination),
        )
    return True


def when_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fail_over(
    db: Database,
    source: str,
    target: str,
    *,
    after: float,
    actor: str,
    now: float | None = None,
    limit: int = _MOVE_BATCH,
) -> Move:
    """Move up to `limit` waiting deliveries of `source`, down over `after` s, to `target`."""
    moment = time.time() if now is None else now
    with db.transaction() as cur:
        health = cur.execute(
            "SELECT * FROM destination_health WHERE destination = ?"
            + db.for_update(skip_locked=False),
            (source,),
        ).fetchone()
        if health is None or health["state"] != "down":
            return Move()
        if moment - float(health["since"]) < after:
            return Move()
        _locked(db, cur, target, moment)  # moves into `target` one at a time (see above)
        rows = cur.execute(
            "SELECT id, instance_id, study_instance_uid, rule, priority, created_at "
            f"FROM deliveries WHERE destination = ? AND {_WAITING} ORDER BY id LIMIT ?"
            + db.for_update(),
            (source, moment, limit),
        ).fetchall()
        if not rows:
            return Move()
        cause = (
            f"down since {when_utc(float(health['since']))}, "
            f"last error {health['last_error'] or 'unknown'}"
        )
        reason = f"failed over from {source}: {cause}"
        existing: dict[int, Row] = {}
        instance_ids = sorted({int(row["instance_id"]) for row in rows})
        for start in range(0, len(instance_ids), _IDS_PER_STATEMENT):
            chunk = instance_ids[start : start + _IDS_PER_STATEMENT]
            for row in cur.execute(
                "SELECT id, instance_id, state FROM deliveries WHERE destination = ? "
                f"AND state <> 'superseded' AND instance_id IN ({', '.join('?' for _ in chunk)})",
                (target, *chunk),
            ).fetchall():
                existing.setdefault(int(row["instance_id"]), row)
        settled: list[tuple[object, ...]] = []
        studies: dict[str, list[int]] = {}
        for row in rows:
            there = existing.get(int(row["instance_id"]))
            counts = studies.setdefault(str(row["study_instance_uid"]), [0, 0])
            if there is not None:
                note = (
                    f"failed over to {target}, which already has this instance "
                    f"(delivery {there['id']}, {there['state']}): not sent again; "
                    f"{source} {cause}"
                )
                counts[1] += 1
            else:
                new_id = cur.insert_returning_id(
                    "INSERT INTO deliveries (instance_id, study_instance_uid, destination, rule, "
                    "priority, state, attempts, next_attempt_at, created_at, updated_at, "
                    "origin_id, note) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                    (
                        row["instance_id"],
                        row["study_instance_uid"],
                        target,
                        row["rule"],
                        row["priority"],
                        moment,
                        row["created_at"],  # the age budget (retry.max_age_hours) carries over
                        moment,
                        row["id"],
                        reason,
                    ),
                )
                existing[int(row["instance_id"])] = {"id": new_id, "state": "pending"}
                note = f"failed over to {target} (delivery {new_id}): {source} {cause}"
                counts[0] += 1
            settled.append((moment, moment, note, row["id"], moment))
        cur.executemany(
            "UPDATE deliveries SET state = 'failed_over', settled_at = ?, updated_at = ?, "
            "lease_owner = NULL, lease_expires_at = NULL, last_status = 'failed over', "
            f"note = ? WHERE id = ? AND {_WAITING}",
            settled,
        )
        for study, (moved, there_already) in studies.items():
            record_event(
                cur,
                "delivery.failed_over",
                outcome="failed_over",
                actor=actor,
                study_uid=study,
                detail={
                    "from": source,
                    "to": target,
                    "moved": moved,
                    "already_at_target": there_already,
                    "reason": reason,
                },
                at=moment,
            )
    moved = sum(counts[0] for counts in studies.values())
    return Move(moved=moved, already_there=len(rows) - moved, reason=reason)


def requeue_failed_over(
    db: Database, destination: str, *, study_uid: str | None = None, actor: str = "cli"
) -> int:
    """Send failed-over instances to their original destination as well (the copies at the
    failover target stay): their deliveries go back in the queue with a fresh budget."""
    return requeue(
        db,
        destination,
        "failed_over",
        study_uid=study_uid,
        actor=actor,
        note="queued again after failover (retry --failed-over); was: ",
    )
