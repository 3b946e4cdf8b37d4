"""The state store's behaviour, run against SQLite and PostgreSQL with the same SQL.

The queue tests drive the real functions the workers use (`lease_batch`, `settle`, `release`,
`requeue_dead`, `queue_summary`); instances are created by the real ingest use case, so every
SQL statement a gateway runs in production runs here on both backends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.config import Settings, parse_settings
from gateway.db import Database
from gateway.db.deliveries import (
    Settlement,
    attempts_of,
    lease_batch,
    queue_summary,
    release,
    requeue_dead,
    settle,
)
from gateway.db.events import events_for
from gateway.db.instances import HEADER_PENDING
from gateway.db.schema import MIGRATIONS
from gateway.dicom.attributes import header_json
from gateway.exceptions import StoreError
from gateway.headers import with_headers
from gateway.ingest import Ingestor, Source
from gateway.report import study_trace
from gateway.spool.filesystem import FilesystemSpool
from tests.contract.conftest import PAIRS, Backends

SOURCE = Source(door="dimse", calling_ae="CT1", called_ae="GATEWAY", peer="127.0.0.1")
BIG = 10**12


def gateway_settings(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "destinations": {
                "pacs": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 9},
                "cloud": {"type": "dicomweb", "url": "http://127.0.0.1:9/dicomweb"},
            },
            "routes": [
                {"name": "ct", "match": {"Modality": "CT"}, "forward": ["pacs"]},
                {"name": "mr", "match": {"Modality": "MR"}, "forward": ["pacs", "cloud"]},
            ],
        },
        base_dir=tmp_path,
    )


def dicom_file(folder: Path, study_uid: str, *, modality: str = "CT", fill: int = 0) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P1"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.PixelData = bytes([fill % 256]) * 16
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def seed(db: Database, tmp_path: Path, studies: int, per_study: int, **kw: Any) -> list[str]:
    """Ingest `studies` x `per_study` instances routed to pacs; returns the study UIDs."""
    settings = gateway_settings(tmp_path)
    ingestor = Ingestor(settings, FilesystemSpool(tmp_path / "seed-spool"), db)
    uids = []
    for s in range(studies):
        study = f"1.2.826.0.1.{int(time.time() * 1000) % 10**9}.{s}"
        uids.append(study)
        for n in range(per_study):
            ingestor.accept_file(dicom_file(ingestor.staging_dir, study, fill=n, **kw), SOURCE)
    return uids


def delivered(delivery_id: int, *, state: str = "delivered", **kw: Any) -> Settlement:
    now = time.time()
    return Settlement(
        delivery_id=delivery_id,
        state=state,
        status="0x0000" if state == "delivered" else "0xA700",
        detail=kw.pop("detail", state),
        started_at=now,
        finished_at=now,
        **kw,
    )


def count(db: Database, sql: str, params: tuple[Any, ...] = ()) -> int:
    with db.transaction(write=False) as cur:
        row = cur.execute(sql, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


# -- engine --------------------------------------------------------------------------------


def test_migrations_are_recorded_and_idempotent(connect: Callable[[], Database]) -> None:
    first = connect()
    second = connect()  # opening again migrates nothing and fails nothing
    for db in (first, second):
        assert count(db, "SELECT MAX(version) FROM schema_version") == len(MIGRATIONS)
        assert count(db, "SELECT COUNT(*) FROM schema_version") == len(MIGRATIONS)


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    from gateway.db import open_database

    opened: list[Database] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_database(database_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors, errors
        assert count(opened[0], "SELECT COUNT(*) FROM schema_version") == len(MIGRATIONS)
    finally:
        for db in opened:
            db.close()


def test_placeholders_and_literals_survive_translation(database: Database) -> None:
    with database.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT 'what? 100%' AS literal, ? AS value, ? || '%' AS joined", ("x?", "50")
        ).fetchone()
    assert row == {"literal": "what? 100%", "value": "x?", "joined": "50%"}


def test_insert_returning_id_and_rollback(database: Database) -> None:
    sql = "INSERT INTO events (at, kind, outcome) VALUES (?, ?, ?)"
    with database.transaction() as cur:
        first = cur.insert_returning_id(sql, (1.0, "test.one", "ok"))
        second = cur.insert_returning_id(sql, (2.0, "test.two", "ok"))
    assert second > first
    with pytest.raises(RuntimeError), database.transaction() as cur:
        cur.insert_returning_id(sql, (3.0, "test.three", "ok"))
        raise RuntimeError("abort the transaction")
    assert count(database, "SELECT COUNT(*) FROM events WHERE kind LIKE 'test.%'") == 2


def test_sql_errors_become_store_errors(database: Database) -> None:
    with pytest.raises(StoreError), database.transaction() as cur:
        cur.execute("SELECT * FROM no_such_table")
    database.check()  # the connection is still usable afterwards


# -- ingest outbox -------------------------------------------------------------------------


@pytest.mark.parametrize("backends", PAIRS, indirect=True)
def test_ingest_commits_instance_decision_and_deliveries_together(
    backends: Backends, tmp_path: Path
) -> None:
    spool, db = backends.spool(), backends.database()
    ingestor = Ingestor(gateway_settings(tmp_path), spool, db)
    path = dicom_file(ingestor.staging_dir, "1.2.3.100", modality="MR")
    result = ingestor.accept_file(path, SOURCE)
    assert not path.exists()
    trace = study_trace(db, "1.2.3.100")
    (instance,) = trace["instances"]
    assert spool.exists(instance_key(db, result.header.sop_instance_uid))
    assert {d["destination"] for d in instance["deliveries"]} == {"pacs", "cloud"}
    assert trace["summary"] == {"pacs": {"pending": 1}, "cloud": {"pending": 1}}
    assert [e["kind"] for e in trace["events"]] == ["instance.received"]
    db.close()


@pytest.mark.parametrize("backends", PAIRS, indirect=True)
def test_failed_commit_leaves_no_row_and_no_object(
    backends: Backends, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.db.instances as instances

    spool, db = backends.spool(), backends.database()
    ingestor = Ingestor(gateway_settings(tmp_path), spool, db)
    create = instances._create_deliveries
    keys: list[str] = []

    def fail_after_first_delivery(cur: Any, instance_id: int, new: Any) -> Any:
        keys.append(new.spool_key)
        create(cur, instance_id, new)  # instance and deliveries are written...
        raise StoreError("simulated failure before commit")  # ...and must all roll back

    monkeypatch.setattr(instances, "_create_deliveries", fail_after_first_delivery)
    with pytest.raises(StoreError):
        ingestor.accept_file(dicom_file(ingestor.staging_dir, "1.2.3.101", modality="MR"), SOURCE)
    assert count(db, "SELECT COUNT(*) FROM instances") == 0
    assert count(db, "SELECT COUNT(*) FROM deliveries") == 0
    assert count(db, "SELECT COUNT(*) FROM events WHERE kind = 'instance.received'") == 0
    assert keys and not spool.exists(keys[0]), "the uploaded object of a failed commit is removed"
    monkeypatch.undo()
    ingestor.accept_file(dicom_file(ingestor.staging_dir, "1.2.3.101", modality="MR"), SOURCE)
    assert count(db, "SELECT COUNT(*) FROM deliveries") == 2
    db.close()


@pytest.mark.parametrize("backends", PAIRS, indirect=True)
def test_group_commit_records_each_instance_once(backends: Backends, tmp_path: Path) -> None:
    spool, db = backends.spool(), backends.database()
    ingestor = Ingestor(gateway_settings(tmp_path), spool, db)
    first = dicom_file(ingestor.staging_dir, "1.2.3.102", modality="MR")
    again = ingestor.staging_dir / "again.dcm"
    again.write_bytes(first.read_bytes())
    junk = ingestor.staging_dir / "junk.dcm"
    junk.write_bytes(b"junk" * 100)
    second = dicom_file(ingestor.staging_dir, "1.2.3.102", fill=1)
    outcomes = ingestor.accept_files([first, junk, again, second], SOURCE)
    assert [type(o).__name__ for o in outcomes] == [
        "IngestResult",
        "InvalidInputError",
        "IngestResult",
        "IngestResult",
    ]
    assert [o.outcome.value for o in outcomes if not isinstance(o, Exception)] == [
        "stored",
        "identical",  # the same SOP instance twice in one request: recorded once
        "stored",
    ]
    assert count(db, "SELECT COUNT(*) FROM instances") == 2
    assert count(db, "SELECT COUNT(*) FROM deliveries") == 3
    assert count(db, "SELECT COUNT(*) FROM events WHERE kind = 'instance.received'") == 3
    assert count(db, "SELECT COUNT(*) FROM events WHERE kind = 'instance.refused'") == 1
    db.close()


@pytest.mark.parametrize("backends", PAIRS, indirect=True)
def test_header_json_is_made_from_the_spool_on_first_read(
    backends: Backends, tmp_path: Path
) -> None:
    spool, db = backends.spool(), backends.database()
    ingestor = Ingestor(gateway_settings(tmp_path), spool, db)
    path = dicom_file(ingestor.staging_dir, "1.2.3.103")
    expected = header_json(pydicom.dcmread(path, stop_before_pixels=True))
    ingestor.accept_file(path, SOURCE)
    with db.transaction(write=False) as cur:
        rows = cur.execute("SELECT * FROM instances").fetchall()
    assert [row["header_json"] for row in rows] == [HEADER_PENDING]
    with_headers(db, spool, rows)
    assert [row["header_json"] for row in rows] == [expected]
    assert count(db, "SELECT COUNT(*) FROM instances WHERE header_json = ?", (expected,)) == 1
    db.close()


def instance_key(db: Database, sop_uid: str) -> str:
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT spool_key FROM instances WHERE sop_instance_uid = ?", (sop_uid,)
        ).fetchone()
    assert row is not None
    return str(row["spool_key"])


# -- the delivery queue --------------------------------------------------------------------


def test_a_lease_takes_the_due_deliveries_of_one_study(database: Database, tmp_path: Path) -> None:
    studies = seed(database, tmp_path, studies=2, per_study=3)
    batch = lease_batch(database, "pacs", "w1", lease_seconds=60, max_instances=10, max_bytes=BIG)
    assert len(batch) == 3
    assert {item.instance["study_instance_uid"] for item in batch} == {studies[0]}
    assert all(item.attempt == 1 for item in batch)
    limited = lease_batch(database, "pacs", "w2", lease_seconds=60, max_instances=2, max_bytes=BIG)
    assert len(limited) == 2 and {i.instance["study_instance_uid"] for i in limited} == {studies[1]}
    assert (
        lease_batch(database, "cloud", "w3", lease_seconds=60, max_instances=9, max_bytes=BIG) == []
    )


def test_concurrent_leases_never_share_a_delivery(
    connect: Callable[[], Database], tmp_path: Path
) -> None:
    """Six workers, each with its own connection (as six replicas would), drain one queue."""
    seed(connect(), tmp_path, studies=10, per_study=12)
    total = 120
    leased: list[list[int]] = [[] for _ in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(index: int) -> None:
        db = connect()
        owner = f"replica-{index}"
        try:
            barrier.wait()
            idle = 0
            while idle < 3:
                batch = lease_batch(
                    db, "pacs", owner, lease_seconds=60, max_instances=5, max_bytes=BIG
                )
                if not batch:
                    idle += 1
                    time.sleep(0.01)
                    continue
                idle = 0
                leased[index].extend(item.delivery_id for item in batch)
                assert settle(db, owner, [delivered(item.delivery_id) for item in batch]) == len(
                    batch
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    everything = [delivery for batch in leased for delivery in batch]
    duplicates = [d for d, n in Counter(everything).items() if n > 1]
    assert not duplicates, f"deliveries leased twice: {duplicates}"
    assert len(everything) == total
    print("leases per worker:", [len(batch) for batch in leased])
    db = connect()
    assert count(db, "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'") == total
    assert count(db, "SELECT COUNT(*) FROM delivery_attempts") == total


def test_an_expired_lease_is_taken_over(database: Database, tmp_path: Path) -> None:
    seed(database, tmp_path, studies=1, per_study=2)
    t0 = time.time()
    first = lease_batch(
        database, "pacs", "dead-worker", lease_seconds=5, max_instances=10, max_bytes=BIG, now=t0
    )
    assert len(first) == 2
    assert (
        lease_batch(
            database, "pacs", "other", lease_seconds=5, max_instances=10, max_bytes=BIG, now=t0 + 4
        )
        == []
    ), "a live lease is not taken"
    taken = lease_batch(
        database, "pacs", "other", lease_seconds=5, max_instances=10, max_bytes=BIG, now=t0 + 6
    )
    assert sorted(i.delivery_id for i in taken) == sorted(i.delivery_id for i in first)
    assert all(item.attempt == 2 for item in taken)
    ids = [item.delivery_id for item in first]
    assert settle(database, "dead-worker", [delivered(i) for i in ids]) == 0, "no longer its lease"
    assert settle(database, "other", [delivered(i) for i in ids]) == 2


def test_settle_records_each_outcome(database: Database, tmp_path: Path) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=3)
    batch = lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    ok, retry, dead = (item.delivery_id for item in batch)
    retry_at = time.time() + 3600
    settled = settle(
        database,
        "w",
        [
            delivered(ok, warning=True),
            delivered(retry, state="pending", retry_at=retry_at, detail="association refused"),
            delivered(dead, state="dead", detail="0xC000 cannot understand"),
        ],
    )
    assert settled == 3
    trace = study_trace(database, study)
    states = {
        d["id"]: (d["state"], d["warning"]) for i in trace["instances"] for d in i["deliveries"]
    }
    assert states == {ok: ("delivered", 1), retry: ("pending", 0), dead: ("dead", 0)}
    log = attempts_of(database, [ok, retry, dead])
    assert [(a["delivery_id"], a["outcome"], a["attempt"]) for a in log] == [
        (ok, "delivered", 1),
        (retry, "pending", 1),
        (dead, "dead", 1),
    ]
    assert [e["kind"] for e in events_for(database, study_uid=study)].count("delivery.dead") == 1
    assert (
        lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG) == []
    ), "the retry is not due before retry_at"
    later = lease_batch(
        database,
        "pacs",
        "w",
        lease_seconds=60,
        max_instances=10,
        max_bytes=BIG,
        now=retry_at + 1,
    )
    assert [item.delivery_id for item in later] == [retry] and later[0].attempt == 2


def test_release_gives_work_back_without_counting_an_attempt(
    database: Database, tmp_path: Path
) -> None:
    seed(database, tmp_path, studies=1, per_study=2)
    batch = lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    release(database, "w", [item.delivery_id for item in batch])
    again = lease_batch(database, "pacs", "x", lease_seconds=60, max_instances=10, max_bytes=BIG)
    assert len(again) == 2 and all(item.attempt == 1 for item in again)


def test_requeue_dead_and_queue_summary(database: Database, tmp_path: Path) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=3, modality="MR")  # pacs + cloud
    batch = lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    settle(database, "w", [delivered(item.delivery_id, state="dead") for item in batch])
    summary = {(r["destination"], r["state"]): r for r in queue_summary(database)}
    assert {key: row["count"] for key, row in summary.items()} == {
        ("cloud", "pending"): 3,
        ("pacs", "dead"): 3,
    }
    assert summary[("cloud", "pending")]["oldest_age"] >= 0
    assert requeue_dead(database, "pacs", study_uid=study, actor="test") == 3
    assert requeue_dead(database, "pacs", actor="test") == 0
    again = lease_batch(database, "pacs", "w", lease_seconds=60, max_instances=10, max_bytes=BIG)
    assert len(again) == 3 and all(item.attempt == 1 for item in again)
    kinds = [e["kind"] for e in events_for(database, study_uid=study)]
    assert kinds.count("delivery.retry") == 1


# -- connections ---------------------------------------------------------------------------


def open_connections(db: Database, database_url: str) -> int:
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///") :]
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _readlink(fd) == path)
    with db.transaction(write=False) as cur:
        row = cur.execute(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'dicom-gateway'"
        ).fetchone()
    assert row is not None
    return int(row["n"])


def _readlink(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


def test_short_lived_threads_do_not_pile_up_connections(
    database: Database, database_url: str
) -> None:
    """pynetdicom runs each association in a new thread; 60 of them must not keep 60 connections."""
    for _ in range(60):
        thread = threading.Thread(target=database.check)
        thread.start()
        thread.join()
    database.check()
    assert open_connections(database, database_url) <= 10


@pytest.mark.postgres
def test_postgres_recovers_after_its_connections_were_cut(
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    import gateway.db.postgres as postgres
    from gateway.db import open_database

    monkeypatch.setattr(postgres, "_PROBE_AFTER_IDLE", 0.0)
    url = postgres_server.create_database()
    db = open_database(url)
    try:
        db.check()
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        db.check()  # the dead pooled connection is noticed and replaced, not handed out
    finally:
        db.close()


# -- QIDO-RS -------------------------------------------------------------------------------


def test_qido_matching_is_the_same_on_every_backend(database: Database, tmp_path: Path) -> None:
    """The QIDO SQL (wildcards, literal LIKE metacharacters, fuzzy names, ranges, paging)."""
    from gateway.db.qido import Level, Match, Search, search

    ingestor = Ingestor(gateway_settings(tmp_path), FilesystemSpool(tmp_path / "q"), database)
    for study, name, date, accession, patient in (
        ("1.2.9.1", "DOE^JOHN", "20240110", "ACC1", "P1"),
        ("1.2.9.2", "doe^jane", "20240120", "X_1%", "P2"),
        ("1.2.9.3", "Müller^Jürgen", "20231231", "ACC3", "P1"),
    ):
        path = dicom_file(ingestor.staging_dir, study)
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.StudyDate, ds.AccessionNumber = name, date, accession
        ds.PatientID = patient
        ds.save_as(path, enforce_file_format=True)
        ingestor.accept_file(path, SOURCE)

    def studies(*matches: tuple[str, str], fuzzy: bool = False, **kw: Any) -> list[str]:
        query = Search(level=Level.STUDY, matches=[Match(*m) for m in matches], fuzzy=fuzzy, **kw)
        return [str(hit.row["study_instance_uid"]) for hit in search(database, query).hits]

    assert studies(("PatientName", "DOE*")) == ["1.2.9.1"]
    assert studies(("PatientName", "d?e^*")) == ["1.2.9.2"]
    assert studies(("AccessionNumber", "X_1%")) == ["1.2.9.2"]
    assert studies(("AccessionNumber", "ACC_")) == []
    assert studies(("PatientName", "doe"), fuzzy=True) == ["1.2.9.1", "1.2.9.2"]
    assert studies(("PatientName", "müller"), fuzzy=True) == ["1.2.9.3"]
    assert studies(("StudyDate", "20240101-20240131")) == ["1.2.9.1", "1.2.9.2"]
    assert studies(limit=2, offset=1) == ["1.2.9.2", "1.2.9.3"]
    # C-FIND's patient level (groups by Patient ID) and the C-MOVE/C-GET lookup
    from gateway.db.retrieve import instances_matching

    patients = search(database, Search(level=Level.PATIENT)).hits
    assert [(hit.row["patient_id"], hit.studies, hit.instances) for hit in patients] == [
        ("P1", 2, 2),
        ("P2", 1, 1),
    ]
    rows = instances_matching(database, [Match("StudyInstanceUID", "1.2.9.3\\1.2.9.2")])
    assert [row["study_instance_uid"] for row in rows] == ["1.2.9.2", "1.2.9.3"]


def test_commitments_are_found_by_instance_and_keep_their_trace_context(
    database: Database,
) -> None:
    from gateway.db.commitments import (
        CommitmentRequest,
        ReferencedInstance,
        commitments_naming,
        lease_due,
        record_request,
    )

    ct = "1.2.840.10008.5.1.4.1.1.2"
    first, second, other = generate_uid(), generate_uid(), generate_uid()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    now = time.time()
    for transaction, items in (("1.2.3.1", (first, second)), ("1.2.3.2", (second, other))):
        request = CommitmentRequest(
            transaction_uid=transaction,
            calling_ae="MODALITY",
            called_ae="GATEWAY",
            peer="127.0.0.1",
            items=tuple(ReferencedInstance(ct, sop) for sop in items),
            requested_at=now if transaction.endswith("1") else now + 1,
            deadline_at=now + 60,
            trace_context=traceparent,
        )
        record_request(database, request)
    record_request(database, request)  # the same request again adds no items
    found = commitments_naming(database, [first, second])
    pairs = [(r["sop_instance_uid"], r["transaction_uid"]) for r in found]
    assert sorted(pairs[:2]) == sorted([(first, "1.2.3.1"), (second, "1.2.3.1")])
    assert pairs[2] == (second, "1.2.3.2"), "oldest request first"
    assert len(found) == 3 and all(r["state"] == "pending" for r in found)
    leased = lease_due(database, "owner", lease_seconds=30, limit=5, now=now + 2)
    assert {t.trace_context for t in leased} == {traceparent}
