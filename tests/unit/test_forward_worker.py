"""DeliveryWorker and the queue it drives, on a real SQLite database and filesystem spool.

The sender is a stand-in that records the batches it is given: these tests are about how work
is leased, gathered and settled, not about a wire protocol.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import Settings, parse_settings
from gateway.db import Database, open_database
from gateway.db import deliveries as queue
from gateway.db.deliveries import Settlement, due_times, lease_batch, settle
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.worker import DeliveryWorker
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool
from tests.unit.test_ingest import make_file

SOURCE = Source(door="dimse", calling_ae="CT1", called_ae="GATEWAY", peer="127.0.0.1")
BIG = 10**12


@dataclass
class RecordingSender:
    """Delivers everything after `delay` seconds; remembers the size of every batch."""

    name: str = "cloud"
    delay: float = 0.002
    batches: list[int] = field(default_factory=list)

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        self.batches.append(len(batch))
        time.sleep(self.delay)
        return [SendResult(i.delivery_id, Outcome.DELIVERED, "HTTP 200") for i in batch]

    def close(self) -> None:
        pass


@dataclass
class Gateway:
    settings: Settings
    db: Database
    spool: FilesystemSpool
    ingestor: Ingestor
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def store(self, study_uid: str) -> None:
        """Ingest one small CT instance of `study_uid` and wake the worker, as the service does."""
        self.ingestor.accept_file(dicom_file(self.ingestor.staging_dir, study_uid), SOURCE)
        self.wake.set()

    def worker(self, sender: RecordingSender, *, linger: float, quiet: float) -> DeliveryWorker:
        return DeliveryWorker(
            destination=self.settings.destinations["cloud"],
            sender=sender,
            db=self.db,
            spool=self.spool,
            delivery=self.settings.delivery,
            owner="test/cloud/0",
            stop=self.stop,
            wake=self.wake,
            linger=linger,
            quiet=quiet,
        )

    @contextlib.contextmanager
    def running(
        self, sender: RecordingSender, *, linger: float, quiet: float
    ) -> Iterator[DeliveryWorker]:
        """A started worker, stopped and joined on the way out."""
        worker = self.worker(sender, linger=linger, quiet=quiet)
        worker.start()
        try:
            yield worker
        finally:
            self.stop.set()
            worker.join(5)

    def count(self, state: str) -> int:
        with self.db.transaction(write=False) as cur:
            row = cur.execute(
                "SELECT COUNT(*) AS n FROM deliveries WHERE state = ?", (state,)
            ).fetchone()
        assert row is not None
        return int(row["n"])

    def wait_delivered(self, expected: int, timeout: float = 30.0) -> float:
        """Seconds until `expected` deliveries are delivered."""
        started = time.monotonic()
        while self.count("delivered") < expected:
            assert time.monotonic() - started < timeout, "deliveries were not settled in time"
            time.sleep(0.01)
        return time.monotonic() - started


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    settings = parse_settings(
        {
            "storage": {"spool": "file://spool", "database": "sqlite:///gw.db"},
            "destinations": {"cloud": {"type": "dicomweb", "url": "http://127.0.0.1:9/dw"}},
            "routes": [{"name": "all", "forward": ["cloud"]}],
        },
        base_dir=tmp_path,
    )
    db = open_database(settings.storage.database)
    spool = FilesystemSpool(tmp_path / "spool")
    gw = Gateway(settings, db, spool, Ingestor(settings, spool, db))
    yield gw
    gw.stop.set()
    db.close()


def dicom_file(folder: Path, study_uid: str) -> Path:
    return make_file(folder, study_uid=study_uid)


def settlement(delivery_id: int, state: str = "delivered") -> Settlement:
    now = time.time()
    return Settlement(
        delivery_id=delivery_id,
        state=state,
        status="HTTP 200",
        detail=state,
        started_at=now,
        finished_at=now,
    )


# -- gathering a batch -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linger", "few"),
    [(0.25, True), (0.0, False)],
    ids=["gathered", "linger-off"],
)
def test_a_study_still_arriving_travels_in_few_requests(
    gateway: Gateway, linger: float, few: bool
) -> None:
    sender = RecordingSender()
    with gateway.running(sender, linger=linger, quiet=0.15):
        for _ in range(40):
            gateway.store("1.2.3.4")
            time.sleep(0.01)
        gateway.wait_delivered(40)
    assert sum(sender.batches) == 40
    if few:
        assert len(sender.batches) <= 8, sender.batches
    else:
        assert len(sender.batches) >= 15, sender.batches


def test_a_backlog_is_leased_without_waiting(gateway: Gateway) -> None:
    for n in range(12):
        gateway.store(f"1.2.3.{n}")  # one instance per study: one request each
    time.sleep(0.4)  # all of it has waited longer than linger
    sender = RecordingSender()
    with gateway.running(sender, linger=0.3, quiet=0.3):
        seconds = gateway.wait_delivered(12)
    assert sender.batches == [1] * 12
    assert seconds < 2.0, f"{seconds:.1f}s: the worker waited before leasing old work"


def test_a_lone_instance_waits_only_until_arrivals_are_quiet(gateway: Gateway) -> None:
    with gateway.running(RecordingSender(), linger=10.0, quiet=0.05):
        gateway.store("1.2.3.4")
        seconds = gateway.wait_delivered(1)
    assert seconds < 3.0, f"{seconds:.1f}s: the worker lingered although nothing else came"


def test_work_whose_arrivals_paused_is_leased_at_once(gateway: Gateway) -> None:
    gateway.store("1.2.3.4")
    time.sleep(0.6)  # longer than quiet, shorter than linger
    with gateway.running(RecordingSender(), linger=30.0, quiet=0.5):
        seconds = gateway.wait_delivered(1)
    assert seconds < 0.4, f"{seconds:.2f}s: the worker waited for arrivals that had stopped"


def test_stopping_interrupts_gathering(gateway: Gateway) -> None:
    worker = gateway.worker(RecordingSender(), linger=30.0, quiet=30.0)
    worker.start()
    gateway.store("1.2.3.4")
    time.sleep(0.2)
    started = time.monotonic()
    gateway.stop.set()
    worker.join(5)
    assert time.monotonic() - started < 3.0
    assert gateway.count("pending") == 1, "nothing was leased while stopping"


def test_due_times_are_those_of_the_oldest_and_latest_pending_delivery(gateway: Gateway) -> None:
    assert due_times(gateway.db, "cloud") is None
    before = time.time()
    gateway.store("1.2.3.4")
    between = time.time()
    gateway.store("1.2.3.5")
    due = due_times(gateway.db, "cloud")
    assert due is not None
    oldest, latest = due
    assert before <= oldest <= between <= latest <= time.time()
    assert due_times(gateway.db, "cloud", now=before - 1) is None, "not due yet"
    lease_batch(gateway.db, "cloud", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    assert due_times(gateway.db, "cloud") == (latest, latest), "leased work is not pending"


# -- leasing and settling ----------------------------------------------------------------------


def test_a_lease_carries_what_a_sender_needs_and_not_the_header(gateway: Gateway) -> None:
    gateway.store("1.2.3.4")
    (item,) = lease_batch(
        gateway.db, "cloud", "w", lease_seconds=60, max_instances=10, max_bytes=BIG
    )
    for column in (
        "spool_key",
        "sop_instance_uid",
        "sop_class_uid",
        "study_instance_uid",
        "series_instance_uid",
        "transfer_syntax_uid",
        "size",
        "received_at",
        "trace_context",
    ):
        assert column in item.instance
    assert "header_json" not in item.instance


def test_a_batch_is_settled_with_one_lookup(gateway: Gateway) -> None:
    for _ in range(30):
        gateway.store("1.2.3.4")
    batch = lease_batch(gateway.db, "cloud", "w", lease_seconds=60, max_instances=50, max_bytes=BIG)
    statements: list[str] = []
    with gateway.db._connection() as connection:
        connection.set_trace_callback(statements.append)
        try:
            settled = settle(gateway.db, "w", [settlement(item.delivery_id) for item in batch])
        finally:
            connection.set_trace_callback(None)
    assert settled == 30
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, selects
    assert gateway.count("delivered") == 30


def test_settle_in_chunks_skips_foreign_leases_and_repeats(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue, "_IDS_PER_STATEMENT", 7)
    for _ in range(20):
        gateway.store("1.2.3.4")
    mine = lease_batch(gateway.db, "cloud", "w", lease_seconds=60, max_instances=17, max_bytes=BIG)
    theirs = lease_batch(gateway.db, "cloud", "x", lease_seconds=60, max_instances=9, max_bytes=BIG)
    assert len(mine) == 17 and len(theirs) == 3
    dead = mine[0].delivery_id
    items = (
        [settlement(dead, "dead")]
        + [settlement(item.delivery_id) for item in mine[1:]]
        + [settlement(mine[1].delivery_id, "dead")]  # a repeat: the first one counts
        + [settlement(item.delivery_id) for item in theirs]  # not ours to settle
    )
    assert settle(gateway.db, "w", items) == 17
    assert gateway.count("delivered") == 16
    assert gateway.count("dead") == 1
    assert gateway.count("leased") == 3
    with gateway.db.transaction(write=False) as cur:
        attempts = cur.execute(
            "SELECT delivery_id, outcome FROM delivery_attempts ORDER BY id"
        ).fetchall()
        events = cur.execute("SELECT kind FROM events WHERE kind = 'delivery.dead'").fetchall()
    assert [(a["delivery_id"], a["outcome"]) for a in attempts] == [(dead, "dead")] + [
        (item.delivery_id, "delivered") for item in mine[1:]
    ]
    assert len(events) == 1
