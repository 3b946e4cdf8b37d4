"""Storage commitment transactions and the commitment policy, on SQLite and PostgreSQL.

The functions the N-ACTION service and the reporter call (`record_request`, `lease_due`,
`wait`, `settle_report`, `evaluate`) run here on every backend with instances and deliveries
made by the real ingest use case, as in tests/contract/test_database_contract.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.commitment.decide import evaluate
from gateway.db import Database
from gateway.db.commitments import (
    CommitmentRequest,
    CommitmentResult,
    FailedInstance,
    Recorded,
    ReferencedInstance,
    Settled,
    lease_due,
    recent_commitments,
    record_request,
    release,
    settle_report,
    wait,
)
from gateway.db.deliveries import lease_batch, settle
from gateway.db.events import events_for
from gateway.db.instances import instances_of_study
from gateway.exceptions import InvalidInputError
from tests.contract.test_database_contract import BIG, count, delivered, seed

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def request(
    uid: str, items: list[ReferencedInstance], *, at: float | None = None
) -> CommitmentRequest:
    moment = time.time() if at is None else at
    return CommitmentRequest(
        transaction_uid=uid,
        calling_ae="CT1",
        called_ae="GATEWAY",
        peer="127.0.0.1",
        items=tuple(items),
        requested_at=moment,
        deadline_at=moment + 60,
    )


def stored(db: Database, study: str) -> list[ReferencedInstance]:
    return [
        ReferencedInstance(row["sop_class_uid"], row["sop_instance_uid"])
        for row in instances_of_study(db, study)
    ]


def row_of(db: Database, uid: str) -> dict[str, object]:
    with db.transaction(write=False) as cur:
        row = cur.execute("SELECT * FROM commitments WHERE transaction_uid = ?", (uid,)).fetchone()
    assert row is not None
    return row


ONE = ReferencedInstance(CT, "1.2.3.1")
TWO = ReferencedInstance(CT, "1.2.3.2")


def test_a_request_is_recorded_once_with_its_audit_event(database: Database) -> None:
    assert record_request(database, request("1.9.1", [ONE, TWO])) is Recorded.RECORDED
    row = row_of(database, "1.9.1")
    assert (row["state"], row["item_count"], row["attempts"]) == ("pending", 2, 0)
    (event,) = [e for e in events_for(database, actor="CT1") if e["kind"] == "commitment.requested"]
    assert event["outcome"] == "recorded" and "1.9.1" in str(event["detail"])
    with pytest.raises(InvalidInputError) as refused:
        record_request(database, request("1.9.1", [ONE]))  # same UID, other instances
    assert refused.value.dicom_status == 0x0115
    assert count(database, "SELECT COUNT(*) FROM commitments") == 1
    assert count(database, "SELECT COUNT(*) FROM events WHERE kind = 'commitment.requested'") == 1


def test_the_same_request_again_is_decided_and_reported_again(database: Database) -> None:
    record_request(database, request("1.9.2", [ONE, TWO]))
    (leased,) = lease_due(database, "r1", lease_seconds=60)
    result = CommitmentResult(
        committed=(ONE,), failed=(FailedInstance(TWO, 0x0112, "not received"),)
    )
    assert settle_report(
        database, "r1", leased, result, Settled.REPORTED, detail="ok", peer="CT1@x"
    )
    assert row_of(database, "1.9.2")["state"] == "reported"
    assert record_request(database, request("1.9.2", [TWO, ONE])) is Recorded.REPEATED
    row = row_of(database, "1.9.2")
    assert (row["state"], row["result"], row["attempts"]) == ("pending", None, 0)
    (again,) = lease_due(database, "r1", lease_seconds=60)
    assert again.result is None and again.transaction_uid == "1.9.2"


def test_due_transactions_are_leased_once_and_expired_leases_are_taken_over(
    database: Database,
) -> None:
    t0 = time.time()
    record_request(database, request("1.9.3", [ONE], at=t0))
    (first,) = lease_due(database, "dead-reporter", lease_seconds=5, now=t0)
    assert lease_due(database, "other", lease_seconds=5, now=t0 + 4) == []
    (taken,) = lease_due(database, "other", lease_seconds=5, now=t0 + 6)
    assert taken.id == first.id
    result = CommitmentResult(committed=(ONE,), failed=())
    assert not settle_report(
        database, "dead-reporter", first, result, Settled.REPORTED, detail="late", peer="-"
    ), "no longer its lease"
    assert settle_report(database, "other", taken, result, Settled.REPORTED, detail="ok", peer="-")


def test_retries_keep_the_decision_and_give_up_is_recorded(database: Database) -> None:
    t0 = time.time()
    record_request(database, request("1.9.4", [ONE, TWO], at=t0))
    (leased,) = lease_due(database, "r", lease_seconds=60, now=t0)
    result = CommitmentResult(committed=(TWO,), failed=(FailedInstance(ONE, 0x0110, "dead"),))
    settle_report(
        database, "r", leased, result, Settled.RETRY, detail="refused", peer="-", retry_at=t0 + 30
    )
    row = row_of(database, "1.9.4")
    assert (row["state"], row["attempts"], row["event_type"]) == ("pending", 1, 2)
    assert lease_due(database, "r", lease_seconds=60, now=t0 + 29) == []
    (again,) = lease_due(database, "r", lease_seconds=60, now=t0 + 31)
    assert again.result == result and again.attempts == 1
    settle_report(database, "r", again, result, Settled.FAILED, detail="gave up", peer="-")
    row = row_of(database, "1.9.4")
    assert (row["state"], row["attempts"], row["failed_count"]) == ("failed", 2, 1)
    kinds = [(e["kind"], e["outcome"]) for e in events_for(database, actor="CT1")]
    assert ("commitment.failed", "gave_up") in kinds
    assert [r["transaction_uid"] for r in recent_commitments(database)] == ["1.9.4"]


def test_waiting_and_release_count_no_attempt(database: Database) -> None:
    t0 = time.time()
    record_request(database, request("1.9.5", [ONE], at=t0))
    (leased,) = lease_due(database, "r", lease_seconds=60, now=t0)
    assert wait(database, "r", leased.id, until=t0 + 10, detail="waiting for 1 of 1")
    assert lease_due(database, "r", lease_seconds=60, now=t0 + 5) == []
    (again,) = lease_due(database, "r", lease_seconds=60, now=t0 + 11)
    release(database, "r", [again.id])
    row = row_of(database, "1.9.5")
    assert (row["state"], row["attempts"], row["last_detail"]) == (
        "pending",
        0,
        "waiting for 1 of 1",
    )


def test_concurrent_reporters_never_share_a_transaction(connect: Callable[[], Database]) -> None:
    db = connect()
    for n in range(40):
        record_request(db, request(f"1.9.6.{n}", [ONE]))
    leased: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(index: int) -> None:
        mine = connect()
        try:
            barrier.wait()
            while batch := lease_due(mine, f"r{index}", lease_seconds=60, limit=3):
                leased[index].extend(t.id for t in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    everything = [i for batch in leased for i in batch]
    assert not [i for i, n in Counter(everything).items() if n > 1], "leased twice"
    assert len(everything) == 40


def test_policy_stored(database: Database, tmp_path: Path) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=2)
    first, second = stored(database, study)
    missing = ReferencedInstance(CT, "1.2.3.999")
    conflict = ReferencedInstance(MR, second.sop_instance_uid)
    found = evaluate(database, [first, missing, conflict], "stored")
    assert found.committed == (first,)
    assert found.waiting == (FailedInstance(missing, 0x0112, "not received"),)
    assert [(f.instance, f.reason) for f in found.failed] == [(conflict, 0x0119)]
    assert [f.instance for f in found.result().failed] == [missing, conflict]
    with database.transaction() as cur:
        cur.execute(
            "UPDATE instances SET purged_at = ? WHERE sop_instance_uid = ?",
            (time.time(), first.sop_instance_uid),
        )
    purged = evaluate(database, [first], "stored")
    assert [(f.instance, f.reason) for f in purged.failed] == [(first, 0x0112)]


def test_policy_delivered_waits_for_every_destination(database: Database, tmp_path: Path) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=3)  # CT: routed to pacs only
    items = stored(database, study)
    waiting = evaluate(database, items, "delivered")
    assert waiting.committed == () and len(waiting.waiting) == 3
    assert {f.detail for f in waiting.waiting} == {"not yet delivered to pacs"}
    batch = lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    by_uid = {item.instance["sop_instance_uid"]: item.delivery_id for item in batch}
    ok, dead, pending = (by_uid[i.sop_instance_uid] for i in items)
    settle(
        database,
        "w",
        [
            delivered(ok),
            delivered(dead, state="dead"),
            delivered(pending, state="pending", retry_at=time.time() + 60),
        ],
    )
    found = evaluate(database, items, "delivered")
    assert found.committed == (items[0],)
    assert [(f.instance, f.reason, f.detail) for f in found.failed] == [
        (items[1], 0x0110, "delivery failed (dead) to pacs")
    ]
    assert [f.instance for f in found.waiting] == [items[2]]
    assert evaluate(database, items, "stored").committed == tuple(items)
