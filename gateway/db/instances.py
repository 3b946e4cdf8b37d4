"""Recording received instances with their routing decision and deliveries, atomically.

`record_instance` is the database half of ingest: in one transaction it decides what a
(possibly repeated) SOP instance means under the duplicate policy, writes the instance, the
Decision, one pending delivery per target, and an audit event. Either all of it commits or
none does, which is what lets the door acknowledge the sender afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.db.engine import Cursor, Database, Row
from gateway.db.events import record_event
from gateway.dicom.attributes import INDEXED_ATTRIBUTES, SEARCH_COLUMNS
from gateway.exceptions import InvalidInputError
from gateway.routing.decision import Decision

STATUS_DUPLICATE_REJECTED = 0x0111


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
    header_json: str
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
    with db.transaction() as cur:
        existing = cur.execute(
            "SELECT id, sha256, spool_key, purged_at FROM instances WHERE sop_instance_uid = ?",
            (new.sop_instance_uid,),
        ).fetchone()
        if existing is None:
            instance_id = _insert(cur, new)
            outcome, old_key = IngestOutcome.STORED, None
        else:
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
            cur.execute(
                "UPDATE instances SET duplicates = duplicates + 1 WHERE id = ?", (instance_id,)
            )
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


def _insert(cur: Cursor, new: NewInstance) -> int:
    placeholders = ", ".join("?" for _ in _ALL_COLUMNS)
    return cur.insert_returning_id(
        f"INSERT INTO instances ({', '.join(_ALL_COLUMNS)}) VALUES ({placeholders})",
        _values(new),
    )


def _replace(cur: Cursor, instance_id: int, new: NewInstance) -> None:
    assignments = ", ".join(f"{column} = ?" for column in _ALL_COLUMNS)
    cur.execute(
        f"UPDATE instances SET {assignments}, version = version + 1, purged_at = NULL WHERE id = ?",
        (*_values(new), instance_id),
    )
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
