"""Storage commitment transactions: recorded before N-ACTION-RSP, leased, reported, settled.

One row per Transaction UID. `record_request` commits the request and its audit event in one
transaction, which is what lets the N-ACTION service answer Success afterwards: a crash at any
later point still reports it (the reporter resumes pending rows at start). The reporter leases
due rows as the delivery workers lease deliveries (owner + expiry, `FOR UPDATE SKIP LOCKED` on
PostgreSQL), so replicas sharing a database never report one transaction twice at once and a
reporter that died lets its lease expire.

States: `pending` (waiting for instances, or for the next report attempt at `next_attempt_at`),
`leased` (a reporter is deciding or sending), `reported` (the peer answered the
N-EVENT-REPORT), `failed` (gave up: the peer stayed unreachable past the retry limits).
The decision (`result`) is stored with the first report attempt, so every retry sends the
same report.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.db.engine import Database, Row
from gateway.db.events import record_event
from gateway.exceptions import InvalidInputError, StoreError

STATUS_INVALID_ARGUMENT = 0x0115


@dataclass(frozen=True, slots=True, order=True)
class ReferencedInstance:
    """One item of a Referenced SOP Sequence."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class FailedInstance:
    """An instance that could not be committed, with its Failure Reason (PS3.3 C.14.1.1)."""

    instance: ReferencedInstance
    reason: int
    detail: str


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """What the N-EVENT-REPORT says: committed instances and failed ones with reasons."""

    committed: tuple[ReferencedInstance, ...]
    failed: tuple[FailedInstance, ...]

    @property
    def event_type(self) -> int:
        """1: Storage Commitment Request Successful; 2: Complete - Failures Exist."""
        return 2 if self.failed else 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "committed": [[i.sop_class_uid, i.sop_instance_uid] for i in self.committed],
                "failed": [
                    [f.instance.sop_class_uid, f.instance.sop_instance_uid, f.reason, f.detail]
                    for f in self.failed
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> CommitmentResult:
        data = json.loads(text)
        return cls(
            committed=tuple(ReferencedInstance(c, i) for c, i in data["committed"]),
            failed=tuple(
                FailedInstance(ReferencedInstance(c, i), int(reason), str(detail))
                for c, i, reason, detail in data["failed"]
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentRequest:
    """A validated N-ACTION Request Storage Commitment."""

    transaction_uid: str
    calling_ae: str
    called_ae: str
    peer: str | None
    items: tuple[ReferencedInstance, ...]
    requested_at: float
    deadline_at: float  # instances not committed by then are reported failed
    trace_context: str | None = None  # the N-ACTION span's traceparent


@dataclass(frozen=True, slots=True, kw_only=True)
class Transaction:
    """A leased transaction, as the reporter needs it."""

    id: int
    transaction_uid: str
    calling_ae: str
    called_ae: str
    items: tuple[ReferencedInstance, ...]
    requested_at: float
    deadline_at: float
    attempts: int
    result: CommitmentResult | None
    trace_context: str | None = None


class Recorded(enum.StrEnum):
    RECORDED = "recorded"  # a new transaction
    REPEATED = "repeated"  # the same request again (same AE, same instances): reported again


def _items_json(items: Sequence[ReferencedInstance]) -> str:
    return json.dumps([[i.sop_class_uid, i.sop_instance_uid] for i in items])


def _items(text: str) -> tuple[ReferencedInstance, ...]:
    return tuple(ReferencedInstance(c, i) for c, i in json.loads(text))


def record_request(db: Database, request: CommitmentRequest) -> Recorded:
    """Persist `request` (and its audit event) in one transaction.

    The same Transaction UID from the same AE for the same instances is a repetition (the
    modality did not get our answer or its report): it is decided and reported again. Any other
    reuse of a Transaction UID raises InvalidInputError (status 0x0115), writing nothing.
    """
    items = _items_json(request.items)
    moment = request.requested_at
    with db.transaction() as cur:
        rows = cur.execute(
            "INSERT INTO commitments (transaction_uid, calling_ae, called_ae, peer, items, "
            "item_count, requested_at, deadline_at, state, attempts, next_attempt_at, "
            "updated_at, trace_context) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) "
            "ON CONFLICT (transaction_uid) DO NOTHING RETURNING id",
            (
                request.transaction_uid,
                request.calling_ae,
                request.called_ae,
                request.peer,
                items,
                len(request.items),
                moment,
                request.deadline_at,
                moment,
                moment,
                request.trace_context,
            ),
        ).fetchall()
        outcome = Recorded.RECORDED
        if rows:
            cur.executemany(
                "INSERT INTO commitment_items (commitment_id, sop_instance_uid) VALUES (?, ?)",
                [(rows[0]["id"], item.sop_instance_uid) for item in request.items],
            )
        else:
            existing = cur.execute(
                "SELECT id, calling_ae, items FROM commitments WHERE transaction_uid = ?"
                + db.for_update(skip_locked=False),
                (request.transaction_uid,),
            ).fetchone()
            if existing is None:
                raise StoreError(f"transaction {request.transaction_uid} is neither new nor known")
            if existing["calling_ae"] != request.calling_ae or sorted(
                _items(existing["items"])
            ) != sorted(request.items):
                raise InvalidInputError(
                    "Transaction UID already in use for another request",
                    dicom_status=STATUS_INVALID_ARGUMENT,
                )
            # Decide again from now: what was missing may have arrived since.
            cur.execute(
                "UPDATE commitments SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                "deadline_at = ?, lease_owner = NULL, lease_expires_at = NULL, "
                "event_type = NULL, result = NULL, committed_count = NULL, "
                "failed_count = NULL, decided_at = NULL, reported_at = NULL, "
                "last_detail = 'requested again', updated_at = ?, peer = ?, trace_context = ? "
                "WHERE id = ?",
                (
                    moment,
                    request.deadline_at,
                    moment,
                    request.peer,
                    request.trace_context,
                    existing["id"],
                ),
            )
            outcome = Recorded.REPEATED
        record_event(
            cur,
            "commitment.requested",
            outcome=outcome.value,
            actor=request.calling_ae,
            at=moment,
            detail={
                "transaction_uid": request.transaction_uid,
                "peer": request.peer,
                "items": len(request.items),
            },
        )
    return outcome


def _due() -> str:
    return (
        "(state = 'pending' AND next_attempt_at <= ?) "
        "OR (state = 'leased' AND lease_expires_at <= ?)"
    )


def lease_due(
    db: Database,
    owner: str,
    *,
    lease_seconds: float,
    limit: int = 16,
    now: float | None = None,
) -> list[Transaction]:
    """Lease up to `limit` transactions that are due (oldest first)."""
    moment = time.time() if now is None else now
    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT id, transaction_uid, calling_ae, called_ae, items, requested_at, "
            f"deadline_at, attempts, result, trace_context FROM commitments WHERE {_due()} "
            f"ORDER BY next_attempt_at, id LIMIT ?{db.skip_locked}",
            (moment, moment, limit),
        ).fetchall()
        cur.executemany(
            "UPDATE commitments SET state = 'leased', lease_owner = ?, lease_expires_at = ?, "
            "updated_at = ? WHERE id = ?",
            [(owner, moment + lease_seconds, moment, row["id"]) for row in rows],
        )
    return [
        Transaction(
            id=int(row["id"]),
            transaction_uid=row["transaction_uid"],
            calling_ae=row["calling_ae"],
            called_ae=row["called_ae"],
            items=_items(row["items"]),
            requested_at=float(row["requested_at"]),
            deadline_at=float(row["deadline_at"]),
            attempts=int(row["attempts"]),
            result=None if row["result"] is None else CommitmentResult.from_json(row["result"]),
            trace_context=row["trace_context"],
        )
        for row in rows
    ]


def next_due_at(db: Database) -> float | None:
    """When the earliest pending transaction is due (None: nothing pending)."""
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT MIN(next_attempt_at) AS due FROM commitments WHERE state = 'pending'"
        ).fetchone()
    return None if row is None or row["due"] is None else float(row["due"])


def wait(db: Database, owner: str, transaction_id: int, *, until: float, detail: str) -> bool:
    """Give a leased transaction back to look at again at `until` (no attempt counted)."""
    with db.transaction() as cur:
        return (
            cur.execute(
                "UPDATE commitments SET state = 'pending', lease_owner = NULL, "
                "lease_expires_at = NULL, next_attempt_at = ?, last_detail = ?, updated_at = ? "
                "WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                (until, detail, time.time(), transaction_id, owner),
            ).rowcount
            == 1
        )


def release(db: Database, owner: str, transaction_ids: Sequence[int]) -> None:
    """Give leased transactions back at once (clean shutdown)."""
    with db.transaction() as cur:
        cur.executemany(
            "UPDATE commitments SET state = 'pending', lease_owner = NULL, "
            "lease_expires_at = NULL WHERE id = ? AND state = 'leased' AND lease_owner = ?",
            [(transaction_id, owner) for transaction_id in transaction_ids],
        )


class Settled(enum.StrEnum):
    REPORTED = "reported"  # the peer answered the N-EVENT-REPORT
    RETRY = "retry"  # not reached; try again at `retry_at`
    FAILED = "failed"  # gave up


def settle_report(
    db: Database,
    owner: str,
    transaction: Transaction,
    result: CommitmentResult,
    outcome: Settled,
    *,
    detail: str,
    peer: str,
    retry_at: float | None = None,
    now: float | None = None,
) -> bool:
    """Record one report attempt and its decision; False if the lease was no longer ours."""
    moment = time.time() if now is None else now
    state = {Settled.REPORTED: "reported", Settled.RETRY: "pending", Settled.FAILED: "failed"}[
        outcome
    ]
    with db.transaction() as cur:
        changed = cur.execute(
            "UPDATE commitments SET state = ?, attempts = attempts + 1, lease_owner = NULL, "
            "lease_expires_at = NULL, next_attempt_at = COALESCE(?, next_attempt_at), "
            "event_type = ?, result = ?, committed_count = ?, failed_count = ?, "
            "decided_at = COALESCE(decided_at, ?), reported_at = ?, last_detail = ?, "
            "updated_at = ? WHERE id = ? AND state = 'leased' AND lease_owner = ?",
            (
                state,
                retry_at,
                result.event_type,
                result.to_json(),
                len(result.committed),
                len(result.failed),
                moment,
                moment if outcome is Settled.REPORTED else None,
                detail,
                moment,
                transaction.id,
                owner,
            ),
        ).rowcount
        if changed != 1:
            return False
        summary: dict[str, Any] = {
            "transaction_uid": transaction.transaction_uid,
            "event_type": result.event_type,
            "committed": len(result.committed),
            "failed": len(result.failed),
            "peer": peer,
            "attempts": transaction.attempts + 1,
        }
        if outcome is Settled.REPORTED:
            record_event(
                cur,
                "commitment.reported",
                outcome="success" if result.event_type == 1 else "failures",
                actor=transaction.calling_ae,
                at=moment,
                detail=summary,
            )
        elif outcome is Settled.FAILED:
            record_event(
                cur,
                "commitment.failed",
                outcome="gave_up",
                actor=transaction.calling_ae,
                at=moment,
                detail={**summary, "reason": detail},
            )
    return True


def recent_commitments(
    db: Database, *, limit: int = 50, calling_ae: str | None = None
) -> list[Row]:
    """The newest `limit` transactions (optionally of one AE title), newest first."""
    where = "WHERE calling_ae = ? " if calling_ae else ""
    params: tuple[Any, ...] = (calling_ae,) if calling_ae else ()
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT transaction_uid, calling_ae, peer, item_count, requested_at, deadline_at, "
            "state, attempts, next_attempt_at, event_type, committed_count, failed_count, "
            f"decided_at, reported_at, last_detail, result FROM commitments {where}"
            "ORDER BY requested_at DESC, id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()


def commitments_naming(db: Database, sop_instance_uids: Sequence[str]) -> list[Row]:
    """Every transaction that names one of `sop_instance_uids`, one row per (instance,
    transaction), oldest request first (`trace STUDY_UID`)."""
    rows: list[Row] = []
    uids = list(dict.fromkeys(sop_instance_uids))
    with db.transaction(write=False) as cur:
        for start in range(0, len(uids), 500):  # bound the parameters of one statement
            chunk = uids[start : start + 500]
            rows.extend(
                cur.execute(
                    "SELECT i.sop_instance_uid, c.transaction_uid, c.calling_ae, c.requested_at, "
                    "c.deadline_at, c.state, c.attempts, c.result, c.reported_at, "
                    "c.last_detail, c.trace_context FROM commitment_items i "
                    "JOIN commitments c ON c.id = i.commitment_id "
                    f"WHERE i.sop_instance_uid IN ({', '.join('?' for _ in chunk)})",
                    chunk,
                ).fetchall()
            )
    return sorted(rows, key=lambda row: (float(row["requested_at"]), row["transaction_uid"]))
