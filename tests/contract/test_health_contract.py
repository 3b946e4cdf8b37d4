"""Destination health and failover on SQLite and PostgreSQL, through the functions workers use.

Batches are leased with `lease_batch` and settled with `settle(then=Breaker.observe(...))`,
exactly as `DeliveryWorker.run_once` does; "replicas" are separate connections (pools) to the
same database, racing in threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.db import Database
from gateway.db.deliveries import LeasedDelivery, Settlement, lease_batch, settle
from gateway.db.events import events_for
from gateway.db.health import (
    claim_probe,
    fail_over,
    health_row,
    health_rows,
    requeue_failed_over,
)
from gateway.forward.base import Outcome, ProbeResult, SendResult
from gateway.forward.health import Breaker
from gateway.health_config import FailoverPolicy, HealthPolicy
from gateway.report import format_trace, study_trace
from tests.contract.test_database_contract import BIG, count, delivered, seed

REFUSED = ("connect failed", "could not connect to PACS@127.0.0.1:9: connection refused")


def breaker(db: Database, *, threshold: int = 3, probe: float = 60.0, **kw: Any) -> Breaker:
    return Breaker(
        db=db,
        destination="pacs",
        policy=HealthPolicy(failure_threshold=threshold, probe_interval=probe),
        **kw,
    )


def lease(db: Database, destination: str = "pacs", limit: int = 100) -> list[LeasedDelivery]:
    return lease_batch(db, destination, "w1", lease_seconds=60, max_instances=limit, max_bytes=BIG)


def send(
    db: Database,
    gate: Breaker,
    leased: list[LeasedDelivery],
    outcomes: list[Outcome],
    *,
    retry_in: float = 1000.0,
) -> None:
    """Settle `leased` as a worker would after the sender reported `outcomes`."""
    results = []
    settlements: list[Settlement] = []
    for item, outcome in zip(leased, outcomes, strict=True):
        if outcome is Outcome.DELIVERED:
            results.append(SendResult(item.delivery_id, outcome, "0x0000"))
            settlements.append(delivered(item.delivery_id))
        else:
            status, detail = REFUSED if outcome is Outcome.TRANSIENT else ("0xA900", "refused")
            results.append(SendResult(item.delivery_id, outcome, status, detail))
            state = "pending" if outcome is Outcome.TRANSIENT else "dead"
            settlements.append(
                delivered(
                    item.delivery_id,
                    state=state,
                    retry_at=time.time() + retry_in if state == "pending" else None,
                )
            )
    settle(db, "w1", settlements, then=gate.observe("w1", results))


def fail_batch(db: Database, gate: Breaker) -> None:
    leased = lease(db)
    assert leased, "nothing due to fail with"
    send(db, gate, leased, [Outcome.TRANSIENT] * len(leased), retry_in=0)


def state(db: Database) -> str:
    row = health_row(db, "pacs")
    return "up" if row is None else str(row["state"])


def kinds(db: Database) -> list[str]:
    return [e["kind"] for e in events_for(db, actor="pacs") if e["kind"].startswith("destination.")]


def take_down(db: Database, gate: Breaker) -> None:
    while state(db) != "down":
        fail_batch(db, gate)


# -- the breaker ---------------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_audits_the_transition_once(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db, replica = connect(), connect()
    seed(db, tmp_path, studies=1, per_study=3)
    gate = breaker(db, threshold=3)
    assert gate.admit("w1", 50) == 50  # never attempted: up
    fail_batch(db, gate)
    assert state(db) == "degraded"
    assert gate.admit("w1", 50) == 50  # degraded still sends whole batches
    fail_batch(db, gate)
    fail_batch(db, gate)
    row = health_row(replica, "pacs")  # another replica sees the same state
    assert row is not None and row["state"] == "down"
    assert row["consecutive_failures"] == 3
    assert row["last_error"] == " - ".join(REFUSED)
    assert row["next_probe_at"] == row["since"] + 60
    assert kinds(db) == ["destination.down"]
    assert gate.admit("w1", 50) == 0, "no batch while down and no probe due"
    # a batch leased before the breaker opened fails late: counted, not a new transition
    fail_batch(db, gate)
    row = health_row(db, "pacs")
    assert row is not None and row["state"] == "down" and row["consecutive_failures"] == 4
    assert kinds(db) == ["destination.down"]


def test_a_partly_failed_batch_degrades_and_a_clean_one_restores(
    database: Database, tmp_path: Path
) -> None:
    seed(database, tmp_path, studies=3, per_study=2)
    gate = breaker(database)
    send(database, gate, lease(database), [Outcome.DELIVERED, Outcome.DELIVERED])
    assert state(database) == "up"
    fail_batch(database, gate)
    send(database, gate, lease(database), [Outcome.DELIVERED, Outcome.PERMANENT])
    row = health_row(database, "pacs")
    assert row is not None and row["state"] == "degraded"
    assert row["consecutive_failures"] == 0, "the peer answered: the failure streak ends"
    assert row["last_error"] == "0xA900 - refused"
    send(database, gate, lease(database), [Outcome.DELIVERED, Outcome.DELIVERED])
    assert state(database) == "up"
    assert kinds(database) == []  # degraded is shown, not audited


def test_one_probe_per_interval_whatever_the_number_of_replicas(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db = connect()
    seed(db, tmp_path, studies=2, per_study=2)
    take_down(db, breaker(db, threshold=1, probe=30))
    row = health_row(db, "pacs")
    assert row is not None
    at = float(row["next_probe_at"])
    assert not claim_probe(db, "pacs", probe_interval=30, now=at - 1), "not due yet"
    replicas = [connect() for _ in range(6)]
    barrier = threading.Barrier(len(replicas))
    won: list[bool] = []

    def race(replica: Database) -> None:
        barrier.wait()
        won.append(claim_probe(replica, "pacs", probe_interval=30, now=at))

    threads = [threading.Thread(target=race, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 5 + [True]
    assert not claim_probe(db, "pacs", probe_interval=30, now=at + 29)
    assert claim_probe(db, "pacs", probe_interval=30, now=at + 30)


def test_a_probe_the_peer_answers_closes_the_breaker_and_releases_the_backlog(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db, replica = connect(), connect()
    seed(db, tmp_path, studies=2, per_study=3)
    gate = breaker(db, threshold=2, probe=0.2)
    for _ in range(2):  # whole batches fail; their retries are due only in 1000 s
        leased = lease(db)
        send(db, gate, leased, [Outcome.TRANSIENT] * len(leased))
    assert state(db) == "down"
    assert lease(db) == [], "the backlog waits for its backoff"
    time.sleep(0.25)
    assert breaker(replica, threshold=2, probe=0.2).admit("w2", 50) == 1, "a probe of one"
    assert gate.admit("w1", 50) == 0, "the other replica's probe is in flight"
    probe = lease(replica, limit=1)
    assert len(probe) == 1, "the claim made the longest-waiting delivery due"
    send(replica, gate, probe, [Outcome.DELIVERED])
    row = health_row(db, "pacs")
    assert row is not None and row["state"] == "up" and row["consecutive_failures"] == 0
    assert row["last_success_at"] is not None and row["next_probe_at"] is None
    assert kinds(db) == ["destination.down", "destination.up"]
    assert len(lease(db)) + len(lease(db)) == 5, "the backlog is due at once"
    assert gate.admit("w1", 50) == 50


# -- failover ------------------------------------------------------------------------------


def rows_of(db: Database, destination: str) -> list[dict[str, Any]]:
    with db.transaction(write=False) as cur:
        return cur.execute(
            "SELECT * FROM deliveries WHERE destination = ? ORDER BY id", (destination,)
        ).fetchall()


def test_failover_moves_pending_deliveries_once_with_the_reason(
    database: Database, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=4)
    with database.transaction(write=False) as cur:
        decisions = [
            r["decision"] for r in cur.execute("SELECT decision FROM instances").fetchall()
        ]
    gate = breaker(database, threshold=1)
    take_down(database, gate)
    since = float(health_row(database, "pacs")["since"])  # type: ignore[index]
    assert fail_over(database, "pacs", "cloud", after=600, actor="w1", now=since + 599).moved == 0
    # A delivery being sent (the probe, say) is never moved; one whose worker died is.
    (in_flight,) = lease_batch(
        database, "pacs", "w1", lease_seconds=3600, max_instances=1, max_bytes=BIG
    )
    (abandoned,) = lease_batch(
        database, "pacs", "gone", lease_seconds=0.01, max_instances=1, max_bytes=BIG
    )
    time.sleep(0.05)
    move = fail_over(database, "pacs", "cloud", after=600, actor="w1", now=since + 601)
    assert (move.moved, move.already_there) == (3, 0)
    assert move.reason.startswith("failed over from pacs: down since ")
    assert move.reason.endswith("Z, last error " + " - ".join(REFUSED))
    pacs = {row["id"]: row for row in rows_of(database, "pacs")}
    assert pacs[in_flight.delivery_id]["state"] == "leased"
    assert pacs[abandoned.delivery_id]["state"] == "failed_over"
    assert pacs[abandoned.delivery_id]["lease_owner"] is None
    moved = [row for row in pacs.values() if row["state"] == "failed_over"]
    assert len(moved) == 3 and all(row["settled_at"] for row in moved)
    cloud = rows_of(database, "cloud")
    assert sorted(row["origin_id"] for row in cloud) == sorted(row["id"] for row in moved)
    assert {row["state"] for row in cloud} == {"pending"}
    assert {row["note"] for row in cloud} == {move.reason}
    assert {row["rule"] for row in cloud} == {"ct"}, "the rule that chose pacs is kept"
    for row in moved:
        assert row["note"].startswith("failed over to cloud (delivery ")
    # nothing left to move: the leased one stays with pacs
    assert fail_over(database, "pacs", "cloud", after=600, actor="w1", now=since + 602).moved == 0
    with database.transaction(write=False) as cur:
        assert [
            r["decision"] for r in cur.execute("SELECT decision FROM instances").fetchall()
        ] == decisions
    trace = study_trace(database, study)
    assert trace["summary"] == {"pacs": {"failed_over": 3, "leased": 1}, "cloud": {"pending": 3}}
    assert [e["kind"] for e in trace["events"]].count("delivery.failed_over") == 1
    text = format_trace(trace)
    assert "-> pacs (rule ct): failed_over" in text and move.reason in text


def test_failover_does_not_send_an_instance_the_target_already_has(
    database: Database, tmp_path: Path
) -> None:
    seed(database, tmp_path, studies=1, per_study=2, modality="MR")  # -> pacs and cloud
    cloud_gate = Breaker(db=database, destination="cloud", policy=HealthPolicy())
    leased = lease(database, "cloud")
    send(database, cloud_gate, leased, [Outcome.DELIVERED] * 2)
    take_down(database, breaker(database, threshold=1))
    move = fail_over(database, "pacs", "cloud", after=0, actor="w1")
    assert (move.moved, move.already_there) == (0, 2)
    assert len(rows_of(database, "cloud")) == 2, "no second copy"
    for row in rows_of(database, "pacs"):
        assert row["state"] == "failed_over"
        assert "already has this instance" in row["note"] and "not sent again" in row["note"]


def test_concurrent_moves_and_leases_settle_every_delivery_exactly_once(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db = connect()
    seed(db, tmp_path, studies=6, per_study=8)
    take_down(db, breaker(db, threshold=1))
    # The failed batch made its study pending again; everything is pending and unleased.
    replicas = [connect() for _ in range(4)]
    leased_ids = [item.delivery_id for item in lease(db, limit=2)]  # in flight before the race
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(replicas) + 1)

    def move(replica: Database) -> None:
        try:
            barrier.wait()
            while fail_over(replica, "pacs", "cloud", after=0, actor="r", limit=5).moved:
                pass
        except BaseException as exc:
            errors.append(exc)

    def take(replica: Database) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                leased_ids.extend(item.delivery_id for item in lease(replica, limit=3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(r,)) for r in replicas]
    threads.append(threading.Thread(target=take, args=(connect(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    pacs = rows_of(db, "pacs")
    assert len(pacs) == 48
    states = Counter(row["state"] for row in pacs)
    assert states == Counter({"failed_over": 48 - len(leased_ids), "leased": len(leased_ids)})
    assert {row["id"] for row in pacs if row["state"] == "leased"} == set(leased_ids)
    cloud = rows_of(db, "cloud")
    per_instance = Counter(row["instance_id"] for row in cloud)
    assert len(cloud) == states["failed_over"] and set(per_instance.values()) == {1}
    assert {row["origin_id"] for row in cloud} == {
        row["id"] for row in pacs if row["state"] == "failed_over"
    }


def test_failed_over_deliveries_can_be_sent_to_the_primary_again(
    database: Database, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=2)
    take_down(database, breaker(database, threshold=1))
    assert fail_over(database, "pacs", "cloud", after=0, actor="w1").moved == 2
    assert requeue_failed_over(database, "pacs", study_uid=study) == 2
    pacs = rows_of(database, "pacs")
    assert {row["state"] for row in pacs} == {"pending"}
    assert all(row["attempts"] == 0 and "retry --failed-over" in row["note"] for row in pacs)
    assert len(rows_of(database, "cloud")) == 2, "the copies at the failover target stay"
    assert count(database, "SELECT COUNT(*) FROM events WHERE kind = 'delivery.retry'") == 1


def test_the_breaker_fails_over_when_it_admits_a_worker(database: Database, tmp_path: Path) -> None:
    seed(database, tmp_path, studies=1, per_study=3)
    woken: list[str] = []
    gate = breaker(
        database,
        threshold=1,
        probe=60,
        failover=FailoverPolicy(to="cloud", after=0),
        on_failover=woken.append,
    )
    take_down(database, gate)
    assert gate.admit("w1", 50) == 0
    assert woken == ["cloud"]
    assert Counter(row["state"] for row in rows_of(database, "pacs")) == {"failed_over": 3}
    assert len(rows_of(database, "cloud")) == 3
    assert [row["destination"] for row in health_rows(database)] == ["cloud", "pacs"]


def test_a_probe_the_peer_refuses_still_closes_the_breaker_as_degraded(
    database: Database, tmp_path: Path
) -> None:
    seed(database, tmp_path, studies=1, per_study=2)
    gate = breaker(database, threshold=1, probe=0.01)
    take_down(database, gate)
    time.sleep(0.02)
    assert gate.admit("w1", 50) == 1
    send(database, gate, lease(database, limit=1), [Outcome.PERMANENT])
    row = health_row(database, "pacs")
    assert row is not None and row["state"] == "degraded", "reachable, though it refused"
    assert row["last_error"] == "0xA900 - refused" and row["last_success_at"] is None
    assert kinds(database) == ["destination.down", "destination.up"]
    (up,) = [e for e in events_for(database, actor="pacs") if e["kind"] == "destination.up"]
    assert up["outcome"] == "degraded"


# -- the idle probe (nothing queued to probe with) -----------------------------------------


def empty_down(db: Database, tmp_path: Path, *, probe: float) -> Breaker:
    """`pacs` down with nothing queued: failover moved its work to `cloud`."""
    seed(db, tmp_path, studies=1, per_study=2)
    gate = breaker(db, threshold=1, probe=probe, failover=FailoverPolicy(to="cloud", after=0))
    take_down(db, gate)
    assert gate.admit("w1", 50) == 0  # the failover
    assert not [r for r in rows_of(db, "pacs") if r["state"] == "pending"]
    return gate


class Probes:
    """An idle probe that answers as told and counts its calls."""

    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> ProbeResult:
        with self._lock:
            self.calls += 1
        return self.result


def test_an_idle_claim_is_one_per_interval_and_only_with_nothing_queued(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db = connect()
    seed(db, tmp_path, studies=1, per_study=2)
    take_down(db, breaker(db, threshold=1, probe=30))
    row = health_row(db, "pacs")
    assert row is not None
    at = float(row["next_probe_at"])
    assert not claim_probe(db, "pacs", probe_interval=30, now=at, idle=True), (
        "work is queued: the probe goes with an instance"
    )
    fail_over(db, "pacs", "cloud", after=0, actor="test", now=at)
    replicas = [connect() for _ in range(6)]
    barrier = threading.Barrier(len(replicas))
    won: list[bool] = []

    def race(replica: Database) -> None:
        barrier.wait()
        won.append(claim_probe(replica, "pacs", probe_interval=30, now=at, idle=True))

    threads = [threading.Thread(target=race, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 5 + [True]
    assert not claim_probe(db, "pacs", probe_interval=30, now=at + 29, idle=True)
    assert claim_probe(db, "pacs", probe_interval=30, now=at + 30, idle=True)


def test_an_idle_probe_the_peer_answers_closes_the_breaker(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    db, replica = connect(), connect()
    gate = empty_down(db, tmp_path, probe=0.05)
    probe = Probes(ProbeResult("up", "C-ECHO", "0x0000", "PACS@127.0.0.1:9 answered C-ECHO"))
    time.sleep(0.06)
    assert gate.admit("w1", 50, idle_probe=probe) == 0, "nothing to lease, probed instead"
    assert probe.calls == 1
    row = health_row(replica, "pacs")  # every replica sees it
    assert row is not None and row["state"] == "up" and row["consecutive_failures"] == 0
    assert row["last_success_at"] is not None and row["next_probe_at"] is None
    assert kinds(db) == ["destination.down", "destination.up"]
    (up,) = [e for e in events_for(db, actor="pacs") if e["kind"] == "destination.up"]
    detail = json.loads(up["detail"])
    assert up["outcome"] == "up" and detail["probe"] == "C-ECHO"
    assert detail["observed_by"] == "w1"
    time.sleep(0.06)
    assert gate.admit("w1", 50, idle_probe=probe) == 50 and probe.calls == 1, "up: no probing"


def test_an_idle_probe_that_fails_keeps_it_down_and_records_why(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    database = connect()
    gate = empty_down(database, tmp_path, probe=0.5)
    before = health_row(database, "pacs")
    assert before is not None
    refused = ProbeResult("down", "C-ECHO", "connect failed", "cannot open a TCP connection")
    probe = Probes(refused)
    time.sleep(0.55)
    assert gate.admit("w1", 50, idle_probe=probe) == 0
    other = breaker(connect(), threshold=1, probe=0.5)
    assert other.admit("w2", 50, idle_probe=probe) == 0
    assert gate.admit("w1", 50, idle_probe=probe) == 0
    assert probe.calls == 1, "the next probe, whoever sends it, waits for the next interval"
    row = health_row(database, "pacs")
    assert row is not None and row["state"] == "down"
    assert row["last_error"] == "connect failed - cannot open a TCP connection (idle probe, C-ECHO)"
    assert row["consecutive_failures"] == before["consecutive_failures"] + 1
    assert float(row["next_probe_at"]) > float(before["next_probe_at"])
    assert row["last_success_at"] == before["last_success_at"]
    assert kinds(database) == ["destination.down"]


def test_an_idle_probe_answered_with_a_refusal_degrades(database: Database, tmp_path: Path) -> None:
    gate = empty_down(database, tmp_path, probe=0.01)
    time.sleep(0.02)
    forbidden = ProbeResult("degraded", "QIDO-RS", "HTTP 403", "the server is up")
    gate.admit("w1", 50, idle_probe=Probes(forbidden))
    row = health_row(database, "pacs")
    assert row is not None and row["state"] == "degraded"
    assert row["last_error"] == "HTTP 403 - the server is up (idle probe, QIDO-RS)"
    (up,) = [e for e in events_for(database, actor="pacs") if e["kind"] == "destination.up"]
    assert up["outcome"] == "degraded"


def test_queued_work_is_probed_with_an_instance_not_the_idle_probe(
    database: Database, tmp_path: Path
) -> None:
    seed(database, tmp_path, studies=1, per_study=2)
    gate = breaker(database, threshold=1, probe=0.01)
    take_down(database, gate)
    time.sleep(0.02)
    probe = Probes(ProbeResult("up", "C-ECHO", "0x0000"))
    assert gate.admit("w1", 50, idle_probe=probe) == 1
    assert probe.calls == 0
