"""Recording received instances with their routing decision and deliveries, atomically.

`record_instances` is the database half of ingest: in one transaction it decides what each
(possibly repeated) SOP instance means under the duplicate policy, writes the instance, the
Decision, one pending delivery per target, and an audit event. Either all of it commits or
none does, which is what lets the door acknowledge the sender afterwards. A door that
acknowledges many instances at once (STOW-RS) records them all in one transaction: one commit,
one WAL fsync, instead of one per instance.

Ingest leaves `header_json` as HEADER_PENDING; gateway/headers.py makes it on first read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.db.engine import Cursor, Database, Row
from gateway.db.events import record_event
from gateway.dicom.attributes import INDEXED_ATTRIBUTES, SEARCH_COLUMNS
from gateway.exceptions import InvalidInputError, StoreError
from gateway.routing.decision import Decision

STATUS_DUPLICATE_REJECTED = 0x0111
HEADER_PENDING = ""  # header_json not made yet (never valid JSON, so never a real header)


class IngestOutcome(enum.StrEnum):
    STORED = "stored"  # a new SOP instance
    REPLACED = "replaced"  # same SOP instance, new bytes: re-routed
    IDENTICAL = "identical"  # same SOP instance, same bytes: nothing new to send
    IGNORED = "ignored"  # same SOP instance, different bytes, policy keeps the first


@dataclass(frozen=True, slots=True, kw_only=True)
class NewInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    attributes: Mapping[str, str | int | None]  # INDEXED_ATTRIBUTES + SEARCH_COLUMNS
    header_json: str = HEADER_PENDING
    spool_key: str
    size: int
    sha256: str
    source: str
    calling_ae: str | None
    called_ae: str | None
    peer: str | None
    received_at: float
    decision: Decision
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    instance_id: int
    outcome: IngestOutcome
    delivery_ids: tuple[int, ...]
    superseded_key: str | None  # old spool object no longer referenced, if any


def record_instance(
    db: Database,
    new: NewInstance,
    *,
    duplicate_policy: str,
    actor: str | None,
    garbage_delay: float,
) -> Recorded:
    """Commit the instance, its Decision and its deliveries in one transaction."""
    [outcome] = record_instances(
        db, [new], duplicate_policy=duplicate_policy, actor=actor, garbage_delay=garbage_delay
    )
    if isinstance(outcome, InvalidInputError):
        raise outcome
    return outcome


def record_instances(
    db: Database,
    instances: Sequence[NewInstance],
    *,
    duplicate_policy: str,
    actor: str | None,
    garbage_delay: float,
) -> list[Recorded | InvalidInputError]:
    """Commit every instance with its Decision and deliveries in one transaction.

    An instance the duplicate policy refuses gets its InvalidInputError in its place and
    writes nothing; the others still commit. A database error rolls back all of them
    (StoreError). Instances are recorded in order, so a SOP instance sent twice in one batch
    is a duplicate of itself, as it would be in two transactions.
    """
    outcomes: list[Recorded | InvalidInputError] = []
    with db.transaction() as cur:
        for new in instances:
            try:
                outcomes.append(_record(cur, new, duplicate_policy, actor, garbage_delay))
            except InvalidInputError as exc:
                outcomes.append(exc)
    return outcomes


def _record(
    cur: Cursor, new: NewInstance, duplicate_policy: str, actor: str | None, garbage_delay: float
) -> Recorded:
    """Record one instance; raises InvalidInputError before writing anything."""
    instance_id = _insert(cur, new)
    if instance_id is not None:
        outcome, old_key = IngestOutcome.STORED, None
    else:
        existing = cur.execute(
            "SELECT id, sha256, spool_key, purged_at FROM instances WHERE sop_instance_uid = ?",
            (new.sop_instance_uid,),
        ).fetchone()
        if existing is None:
            raise StoreError(f"SOP instance {new.sop_instance_uid} is neither new nor stored")
        instance_id = int(existing["id"])
        same = existing["sha256"] == new.sha256 and existing["purged_at"] is None
        if same:
            outcome = IngestOutcome.IDENTICAL
        elif duplicate_policy == "reject":
            raise InvalidInputError(
                f"SOP instance {new.sop_instance_uid} was already received with other "
                "content and the duplicate policy is reject",
                dicom_status=STATUS_DUPLICATE_REJECTED,
            )
        elif duplicate_policy == "ignore":
            outcome = IngestOutcome.IGNORED
        else:
            outcome = IngestOutcome.REPLACED
        old_key = existing["spool_key"] if outcome is IngestOutcome.REPLACED else None
        cur.execute("UPDATE instances SET duplicates = duplicates + 1 WHERE id = ?", (instance_id,))
        if outcome is IngestOutcome.REPLACED:
            _replace(cur, instance_id, new)
    delivery_ids: tuple[int, ...] = ()
    if outcome in (IngestOutcome.STORED, IngestOutcome.REPLACED):
        delivery_ids = _create_deliveries(cur, instance_id, new)
    if old_key:
        cur.execute(
            "INSERT INTO spool_garbage (spool_key, delete_after) VALUES (?, ?) "
            "ON CONFLICT (spool_key) DO NOTHING",
            (old_key, new.received_at + garbage_delay),
        )
    record_event(
        cur,
        "instance.received",
        outcome=outcome.value,
        actor=actor,
        study_uid=new.study_instance_uid,
        sop_uid=new.sop_instance_uid,
        at=new.received_at,
        detail={
            "source": new.source,
            "calling_ae": new.calling_ae,
            "peer": new.peer,
            "size": new.size,
            "sha256": new.sha256,
            "targets": [t.destination for t in new.decision.targets],
            "held": new.decision.held,
        },
    )
    return Recorded(
        instance_id=instance_id, outcome=outcome, delivery_ids=delivery_ids, superseded_key=old_key
    )


_COLUMNS = (
    "sop_instance_uid",
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "transfer_syntax_uid",
    "header_json",
    "spool_key",
    "size",
    "sha256",
    "source",
    "calling_ae",
    "called_ae",
    "peer",
    "received_at",
    "trace_context",
)


_ALL_COLUMNS = (*_COLUMNS, *INDEXED_ATTRIBUTES, *SEARCH_COLUMNS, "decision")


def _values(new: NewInstance) -> list[object]:
    return [
        *(getattr(new, column) for column in _COLUMNS),
        *(new.attributes.get(column) for column in INDEXED_ATTRIBUTES),
        *(new.attributes.get(column) for column in SEARCH_COLUMNS),
        new.decision.to_json(),
    ]


# A new SOP instance is inserted; a known one is left alone (no row returned) for the
# duplicate policy to judge. One statement for the common case instead of a SELECT first.
_INSERT = (
    f"INSERT INTO instances ({', '.join(_ALL_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ALL_COLUMNS)}) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id"
)
_REPLACE = (
    f"UPDATE instances SET {', '.join(f'{column} = ?' for column in _ALL_COLUMNS)}, "
    "version = version + 1, purged_at = NULL WHERE id = ?"
)


def _insert(cur: Cursor, new: NewInstance) -> int | None:
    """The new row's id, or None if the SOP instance is already stored."""
    rows = cur.execute(_INSERT, _values(new)).fetchall()
    return int(rows[0]["id"]) if rows else None


def _replace(cur: Cursor, instance_id: int, new: NewInstance) -> None:
    cur.execute(_REPLACE, (*_values(new), instance_id))
    # Deliveries of the old bytes that have not gone out yet are superseded by the new ones.
    cur.execute(
        "UPDATE deliveries SET state = 'superseded', settled_at = ?, updated_at = ?, "
        "lease_owner = NULL, last_detail = 'replaced by a newer version of the instance' "
        "WHERE instance_id = ? AND state IN ('pending', 'leased', 'dead')",
        (new.received_at, new.received_at, instance_id),
    )


def _create_deliveries(cur: Cursor, instance_id: int, new: NewInstance) -> tuple[int, ...]:
    ids = []
    for target in new.decision.targets:
        delivery_id = cur.insert_returning_id(
            "INSERT INTO deliveries (instance_id, study_instance_uid, destination, rule, "
            "priority, state, attempts, next_attempt_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (
                instance_id,
                new.study_instance_uid,
                target.destination,
                target.rule,
                target.priority,
                new.received_at,
                new.received_at,
                new.received_at,
            ),
        )
        ids.append(delivery_id)
    return tuple(ids)


def instances_of_study(db: Database, study_uid: str) -> list[Row]:
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT * FROM instances WHERE study_instance_uid = ? ORDER BY series_instance_uid, id",
            (study_uid,),
        ).fetchall()


def instance_by_sop(db: Database, sop_uid: str) -> Row | None:
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
        ).fetchone()
