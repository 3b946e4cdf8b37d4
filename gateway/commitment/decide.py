"""Is a requested instance committed? The policy, applied to what the database records.

`stored` (default): the gateway holds the instance durably (its bytes are in the spool, the
row is committed) with the SOP class the modality names. `delivered`: in addition every
destination it was routed to acknowledged it (every delivery not superseded by a newer version
is `delivered`); an instance routed nowhere (held) is not committed, since the gateway is a
cache that purges after `storage.retention_hours`, not an archive.

Each instance is committed, failed (nothing will change that: a SOP class conflict, a dead
delivery) or waiting (not received yet, or still on its way to a destination). Waiting ones
are looked at again until the transaction's deadline, then reported failed with the reason
they were waiting for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.commitment.settings import CommitmentPolicy
from gateway.db.commitments import CommitmentResult, FailedInstance, ReferencedInstance
from gateway.db.engine import Database, Row

# Failure Reason (0008,1197) values, PS3.3 C.14.1.1
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

_PER_STATEMENT = 500  # bound parameters per IN (...) list


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Each requested instance sorted into committed, failed and waiting (request order)."""

    committed: tuple[ReferencedInstance, ...]
    failed: tuple[FailedInstance, ...]
    waiting: tuple[FailedInstance, ...]  # with the failure reason should the wait end now
    order: tuple[ReferencedInstance, ...] = ()  # the request's items

    def result(self) -> CommitmentResult:
        """The report if the decision were made now: waiting instances count as failed."""
        position = {item: index for index, item in enumerate(self.order)}
        failed = sorted((*self.failed, *self.waiting), key=lambda f: position.get(f.instance, 0))
        return CommitmentResult(committed=self.committed, failed=tuple(failed))


def evaluate(
    db: Database, items: Sequence[ReferencedInstance], policy: CommitmentPolicy
) -> Evaluation:
    """Sort `items` by what the database records now (one read transaction)."""
    uids = sorted({item.sop_instance_uid for item in items})
    instances: dict[str, Row] = {}
    deliveries: dict[int, list[Row]] = {}
    with db.transaction(write=False) as cur:
        for start in range(0, len(uids), _PER_STATEMENT):
            chunk = uids[start : start + _PER_STATEMENT]
            for row in cur.execute(
                "SELECT id, sop_instance_uid, sop_class_uid, purged_at FROM instances "
                f"WHERE sop_instance_uid IN ({', '.join('?' for _ in chunk)})",
                chunk,
            ).fetchall():
                instances[row["sop_instance_uid"]] = row
        if policy == "delivered":
            ids = sorted(int(row["id"]) for row in instances.values())
            for start in range(0, len(ids), _PER_STATEMENT):
                chunk_ids = ids[start : start + _PER_STATEMENT]
                for row in cur.execute(
                    "SELECT instance_id, destination, state FROM deliveries "
                    f"WHERE instance_id IN ({', '.join('?' for _ in chunk_ids)}) "
                    "AND state <> 'superseded' ORDER BY id",
                    chunk_ids,
                ).fetchall():
                    deliveries.setdefault(int(row["instance_id"]), []).append(row)
    committed: list[ReferencedInstance] = []
    failed: list[FailedInstance] = []
    waiting: list[FailedInstance] = []
    for item in items:
        verdict = _judge(item, instances.get(item.sop_instance_uid), deliveries, policy)
        if verdict is None:
            committed.append(item)
        elif verdict[0]:
            waiting.append(verdict[1])
        else:
            failed.append(verdict[1])
    return Evaluation(tuple(committed), tuple(failed), tuple(waiting), tuple(items))


def _judge(
    item: ReferencedInstance,
    row: Row | None,
    deliveries: dict[int, list[Row]],
    policy: CommitmentPolicy,
) -> tuple[bool, FailedInstance] | None:
    """None if committed, else (still waiting?, the failure to report)."""
    if row is None:
        return True, FailedInstance(item, NO_SUCH_OBJECT_INSTANCE, "not received")
    if row["sop_class_uid"] != item.sop_class_uid:
        detail = f"stored with SOP class {row['sop_class_uid']}"
        return False, FailedInstance(item, CLASS_INSTANCE_CONFLICT, detail)
    if policy == "stored":
        if row["purged_at"] is not None:
            detail = "no longer held (purged after storage.retention_hours)"
            return False, FailedInstance(item, NO_SUCH_OBJECT_INSTANCE, detail)
        return None
    rows = deliveries.get(int(row["id"]), [])
    if not rows:
        detail = "routed to no destination (held), policy delivered"
        return False, FailedInstance(item, PROCESSING_FAILURE, detail)
    dead = sorted({d["destination"] for d in rows if d["state"] == "dead"})
    if dead:
        detail = f"delivery failed (dead) to {', '.join(dead)}"
        return False, FailedInstance(item, PROCESSING_FAILURE, detail)
    open_ = sorted({d["destination"] for d in rows if d["state"] != "delivered"})
    if open_:
        detail = f"not yet delivered to {', '.join(open_)}"
        return True, FailedInstance(item, PROCESSING_FAILURE, detail)
    return None
