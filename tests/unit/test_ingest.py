"""Ingest against a real filesystem spool and SQLite: the outbox rules and duplicate policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.config import Settings, parse_settings
from gateway.db import open_database
from gateway.db.deliveries import lease_batch, queue_summary
from gateway.db.instances import HEADER_PENDING, IngestOutcome, instance_by_sop
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool

SOURCE = Source(door="dimse", calling_ae="CT1", called_ae="GATEWAY", peer="127.0.0.1")


def settings(tmp_path: Path, **extra: Any) -> Settings:
    raw: dict[str, Any] = {
        "storage": {"spool": "file://spool", "database": "sqlite:///gw.db"},
        "destinations": {
            "cloud": {"type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web"},
            "pacs": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 9},
        },
        "routes": [
            {"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud", "pacs"]},
            {"name": "mr", "match": {"Modality": "MR"}, "forward": ["pacs"]},
        ],
    }
    raw.update(extra)
    return parse_settings(raw, base_dir=tmp_path)


def make_file(
    folder: Path,
    *,
    modality: str = "CT",
    sop_uid: str | None = None,
    study_uid: str = "1.2.3.4",
    fill: int = 0,
) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.BitsAllocated = 8
    ds.PixelData = bytes([fill]) * 32
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ingestor(tmp_path: Path) -> Ingestor:
    s = settings(tmp_path)
    return Ingestor(s, FilesystemSpool(tmp_path / "spool"), open_database(s.storage.database))


def test_instance_is_spooled_routed_and_queued(ingestor: Ingestor, tmp_path: Path) -> None:
    path = make_file(ingestor.staging_dir)
    result = ingestor.accept_file(path, SOURCE)
    assert result.outcome is IngestOutcome.STORED
    assert [t.destination for t in result.decision.targets] == ["cloud", "pacs"]
    assert not path.exists(), "the staged file is consumed"
    db = open_database(f"sqlite:///{tmp_path / 'gw.db'}")
    row = instance_by_sop(db, result.header.sop_instance_uid)
    assert row is not None and row["sha256"] == result.sha256
    assert (tmp_path / "spool" / row["spool_key"]).is_file()
    counts = {(r["destination"], r["state"]): r["count"] for r in queue_summary(db)}
    assert counts == {("cloud", "pending"): 1, ("pacs", "pending"): 1}


def test_identical_duplicate_adds_no_deliveries(ingestor: Ingestor, tmp_path: Path) -> None:
    first = make_file(tmp_path / "a", sop_uid="1.2.3.4.5")
    second = make_file(tmp_path / "b", sop_uid="1.2.3.4.5")
    ingestor.accept_file(first, SOURCE)
    result = ingestor.accept_file(second, SOURCE)
    assert result.outcome is IngestOutcome.IDENTICAL
    db = open_database(f"sqlite:///{tmp_path / 'gw.db'}")
    assert sum(r["count"] for r in queue_summary(db)) == 2
    row = instance_by_sop(db, "1.2.3.4.5")
    assert row is not None and row["duplicates"] == 1
    spooled = [p for p in (tmp_path / "spool").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(spooled) == 1


def test_changed_duplicate_supersedes_pending_deliveries(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    ingestor.accept_file(make_file(tmp_path / "a", sop_uid="1.2.3.4.6", fill=1), SOURCE)
    result = ingestor.accept_file(make_file(tmp_path / "b", sop_uid="1.2.3.4.6", fill=2), SOURCE)
    assert result.outcome is IngestOutcome.REPLACED
    db = open_database(f"sqlite:///{tmp_path / 'gw.db'}")
    counts = {(r["destination"], r["state"]): r["count"] for r in queue_summary(db)}
    assert counts[("cloud", "superseded")] == 1 and counts[("cloud", "pending")] == 1


def test_reject_policy_refuses_changed_duplicate(tmp_path: Path) -> None:
    s = settings(tmp_path, ingest={"duplicate_policy": "reject"})
    ing = Ingestor(s, FilesystemSpool(tmp_path / "spool"), open_database(s.storage.database))
    ing.accept_file(make_file(tmp_path / "a", sop_uid="1.2.3.4.7", fill=1), SOURCE)
    with pytest.raises(InvalidInputError) as info:
        ing.accept_file(make_file(tmp_path / "b", sop_uid="1.2.3.4.7", fill=2), SOURCE)
    assert info.value.dicom_status == 0x0111
    spooled = [p for p in (tmp_path / "spool").rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(spooled) == 1, "the refused copy is not left in the spool"


def test_unmatched_instance_is_held(ingestor: Ingestor, tmp_path: Path) -> None:
    result = ingestor.accept_file(make_file(tmp_path / "a", modality="US"), SOURCE)
    assert result.decision.held and not result.decision.targets


def test_database_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ing = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db)
    with db.transaction() as cur:
        cur.execute("DROP TABLE deliveries")  # the commit of the outbox will now fail
    with pytest.raises(StoreError):
        ing.accept_file(make_file(tmp_path / "a"), SOURCE)
    spooled = [p for p in (tmp_path / "spool").rglob("*.dcm") if ".incoming" not in p.parts]
    assert spooled == []
    with db.transaction(write=False) as cur:
        assert cur.execute("SELECT COUNT(*) AS n FROM instances").fetchone() == {"n": 0}


def test_lease_takes_one_study_and_expired_leases_come_back(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    for index in range(3):
        ingestor.accept_file(make_file(tmp_path / "a", study_uid="1.2.3.10", fill=index), SOURCE)
    ingestor.accept_file(make_file(tmp_path / "b", study_uid="1.2.3.11"), SOURCE)
    db = open_database(f"sqlite:///{tmp_path / 'gw.db'}")
    first = lease_batch(db, "cloud", "w1", lease_seconds=60, max_instances=10, max_bytes=10**9)
    assert {d.instance["study_instance_uid"] for d in first} == {"1.2.3.10"}
    assert len(first) == 3
    other = lease_batch(db, "cloud", "w2", lease_seconds=60, max_instances=10, max_bytes=10**9)
    assert {d.instance["study_instance_uid"] for d in other} == {"1.2.3.11"}
    assert lease_batch(db, "cloud", "w2", lease_seconds=60, max_instances=10, max_bytes=10**9) == []
    import time

    later = lease_batch(
        db, "cloud", "w3", lease_seconds=60, max_instances=10, max_bytes=10**9, now=time.time() + 61
    )
    assert len(later) == 3 and all(d.attempt == 2 for d in later)


@pytest.mark.parametrize("fill_bytes", [32, 300 * 1024], ids=["small", "hashed-beside-the-flush"])
def test_a_failed_flush_after_the_rename_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fill_bytes: int
) -> None:
    """The spool renames before it flushes: a flush that fails must still leave no file and no
    row, and the sender must be told to retry (out of resources)."""
    import errno
    import os
    import stat

    import gateway.spool.filesystem as filesystem

    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ing = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return real_fsync(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem.os, "fsync", failing_fsync)
    path = make_file(tmp_path / "a")
    with path.open("ab") as grow:  # past the pixel data: only the file's size matters here
        grow.write(b"\0" * fill_bytes)
    with pytest.raises(SpoolError, match="Input/output error"):
        ing.accept_file(path, SOURCE)
    assert spooled_files(tmp_path) == []
    with db.transaction(write=False) as cur:
        assert cur.execute("SELECT COUNT(*) AS n FROM instances").fetchone() == {"n": 0}


# -- group commit (a STOW-RS request) -------------------------------------------------------------


def spooled_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "spool").rglob("*.dcm") if ".incoming" not in p.parts]


def test_batch_refuses_one_bad_part_and_stores_the_others(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    junk = ingestor.staging_dir / "junk.dcm"
    junk.write_bytes(b"not a DICOM file" * 20)
    first, second = make_file(ingestor.staging_dir), make_file(ingestor.staging_dir, modality="MR")
    outcomes = ingestor.accept_files([first, junk, second], SOURCE)
    assert [type(o).__name__ for o in outcomes] == [
        "IngestResult",
        "InvalidInputError",
        "IngestResult",
    ]
    assert isinstance(outcomes[1], InvalidInputError) and outcomes[1].dicom_status == 0xC000
    assert junk.exists(), "a refused part's file is left to the door, as with accept_file"
    db = open_database(f"sqlite:///{tmp_path / 'gw.db'}")
    with db.transaction(write=False) as cur:
        kinds = [r["kind"] for r in cur.execute("SELECT kind FROM events ORDER BY id").fetchall()]
    assert sorted(kinds) == ["instance.received", "instance.received", "instance.refused"]
    counts = {(r["destination"], r["state"]): r["count"] for r in queue_summary(db)}
    assert counts == {("cloud", "pending"): 1, ("pacs", "pending"): 2}
    assert len(spooled_files(tmp_path)) == 2


def test_batch_refuses_a_rejected_duplicate_alone(tmp_path: Path) -> None:
    s = settings(tmp_path, ingest={"duplicate_policy": "reject"})
    ing = Ingestor(s, FilesystemSpool(tmp_path / "spool"), open_database(s.storage.database))
    ing.accept_file(make_file(tmp_path / "a", sop_uid="1.2.3.4.8", fill=1), SOURCE)
    changed = make_file(tmp_path / "b", sop_uid="1.2.3.4.8", fill=2)
    outcomes = ing.accept_files([changed, make_file(tmp_path / "c")], SOURCE)
    assert isinstance(outcomes[0], InvalidInputError) and outcomes[0].dicom_status == 0x0111
    assert not isinstance(outcomes[1], Exception)
    assert outcomes[1].outcome is IngestOutcome.STORED
    assert len(spooled_files(tmp_path)) == 2, "the refused copy is not left in the spool"


def test_failed_group_commit_leaves_no_spool_file_and_no_row(tmp_path: Path) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ing = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db)
    with db.transaction() as cur:
        cur.execute("DROP TABLE deliveries")  # the one commit of the batch will now fail
    paths = [make_file(ing.staging_dir, study_uid=f"1.2.3.{n}") for n in (20, 21, 21)]
    outcomes = ing.accept_files(paths, SOURCE)
    assert all(isinstance(o, StoreError) for o in outcomes)
    assert spooled_files(tmp_path) == []
    assert list(ing.staging_dir.iterdir()) == []
    with db.transaction(write=False) as cur:
        assert cur.execute("SELECT COUNT(*) AS n FROM instances").fetchone() == {"n": 0}


def test_group_commit_syncs_the_spool_once_before_the_database(tmp_path: Path) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    calls: list[str] = []

    class Recording(FilesystemSpool):
        def put(self, source: Path, key: str) -> Any:
            calls.append("put")
            return super().put(source, key)

        def put_deferred(self, source: Path, key: str) -> Any:
            calls.append("put_deferred")
            return super().put_deferred(source, key)

        def sync(self, keys: Any) -> None:
            calls.append(f"sync {len(keys)}")
            with db.transaction(write=False) as cur:  # nothing is recorded before the sync
                assert cur.execute("SELECT COUNT(*) AS n FROM instances").fetchone() == {"n": 0}
            super().sync(keys)

    ing = Ingestor(s, Recording(tmp_path / "spool"), db)
    outcomes = ing.accept_files([make_file(ing.staging_dir) for _ in range(3)], SOURCE)
    assert not any(isinstance(o, Exception) for o in outcomes)
    assert calls == ["put_deferred"] * 3 + ["sync 3"]
    calls.clear()
    ing.accept_file(make_file(ing.staging_dir), SOURCE)
    assert calls == ["put"], "a single instance is put durably at once"


def test_ingest_leaves_the_header_json_to_the_first_read(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    result = ingestor.accept_file(make_file(ingestor.staging_dir), SOURCE)
    row = instance_by_sop(
        open_database(f"sqlite:///{tmp_path / 'gw.db'}"), result.header.sop_instance_uid
    )
    assert row is not None and row["header_json"] == HEADER_PENDING
