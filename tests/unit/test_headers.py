"""Header JSON made on first read: the same document ingest used to make, saved once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from gateway.config import parse_settings
from gateway.db import Database, open_database
from gateway.db.instances import HEADER_PENDING
from gateway.dicom.attributes import header_json
from gateway.headers import with_headers
from gateway.ingest import Ingestor, Source
from gateway.retention import purge_expired
from gateway.spool.filesystem import FilesystemSpool

SOURCE = Source(door="stowrs", peer="127.0.0.1")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CHARSET_FILES = Path(pydicom.__file__).parent / "data" / "charset_files"


def made_file(folder: Path, *, implicit: bool = False) -> Path:
    """Sequences, a private element, bulk data (over 1 KiB) and a value over 64 KiB."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Müller^Jörg"
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodingSchemeDesignator = "SRT"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "OB", os.urandom(100_000))
    icon = Dataset()
    icon.Rows = icon.Columns = 32
    icon.BitsAllocated = icon.BitsStored = 8
    icon.SamplesPerPixel, icon.PixelRepresentation = 1, 0
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.PixelData = os.urandom(32 * 32)  # bulk data inside a sequence item
    ds.IconImageSequence = Sequence([icon])
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = 8
    ds.PixelData = b"\x00" * 64
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def as_ingest_made_it(path: Path) -> str:
    """The header JSON exactly as ingest made it before it was deferred."""
    return header_json(pydicom.dcmread(path, stop_before_pixels=True, defer_size=64 * 1024))


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[Ingestor, Database, FilesystemSpool]:
    settings = parse_settings(
        {"storage": {"spool": "file://spool", "database": "sqlite:///gw.db"}}, base_dir=tmp_path
    )
    spool = FilesystemSpool(tmp_path / "spool")
    db = open_database(settings.storage.database)
    return Ingestor(settings, spool, db), db, spool


def rows(db: Database) -> list[dict[str, Any]]:
    with db.transaction(write=False) as cur:
        return cur.execute("SELECT * FROM instances ORDER BY id").fetchall()


def test_headers_are_made_on_first_read_as_ingest_made_them(
    gateway: tuple[Ingestor, Database, FilesystemSpool], tmp_path: Path
) -> None:
    ingestor, db, spool = gateway
    originals = [
        made_file(tmp_path / "in"),
        made_file(tmp_path / "in", implicit=True),
        TEST_FILES / "CT_small.dcm",
        TEST_FILES / "rtplan.dcm",
        TEST_FILES / "MR_small_bigendian.dcm",
        TEST_FILES / "image_dfl.dcm",
        TEST_FILES / "reportsi.dcm",
        CHARSET_FILES / "chrH31.dcm",
    ]
    expected = {}
    for original in originals:
        staged = ingestor.staging_dir / original.name
        shutil.copyfile(original, staged)
        result = ingestor.accept_file(staged, SOURCE)
        expected[result.header.sop_instance_uid] = as_ingest_made_it(original)
    stored = rows(db)
    assert {row["header_json"] for row in stored} == {HEADER_PENDING}
    with_headers(db, spool, stored)
    assert {row["sop_instance_uid"]: row["header_json"] for row in stored} == expected
    assert {row["sop_instance_uid"]: row["header_json"] for row in rows(db)} == expected


def test_a_saved_header_is_not_made_again(
    gateway: tuple[Ingestor, Database, FilesystemSpool], tmp_path: Path
) -> None:
    ingestor, db, spool = gateway
    ingestor.accept_file(made_file(ingestor.staging_dir), SOURCE)
    with_headers(db, spool, rows(db))
    [row] = rows(db)
    (tmp_path / "spool" / row["spool_key"]).unlink()  # a second read would now fail
    with_headers(db, spool, [row])
    assert row["header_json"] != HEADER_PENDING


def test_an_unreadable_object_answers_without_a_header(
    gateway: tuple[Ingestor, Database, FilesystemSpool], tmp_path: Path
) -> None:
    ingestor, db, spool = gateway
    ingestor.accept_file(made_file(ingestor.staging_dir), SOURCE)
    [row] = rows(db)
    (tmp_path / "spool" / row["spool_key"]).unlink()
    with_headers(db, spool, [row])  # logged, not raised
    assert row["header_json"] == HEADER_PENDING
    assert rows(db)[0]["header_json"] == HEADER_PENDING, "made again once the bytes are back"


def test_a_replaced_instance_gets_the_new_header(
    gateway: tuple[Ingestor, Database, FilesystemSpool], tmp_path: Path
) -> None:
    ingestor, db, spool = gateway
    first = made_file(tmp_path / "a")
    changed = pydicom.dcmread(first)
    ingestor.accept_file(first, SOURCE)
    with_headers(db, spool, rows(db))
    changed.PatientName = "OTHER^NAME"
    second = ingestor.staging_dir / "second.dcm"
    changed.save_as(second)
    stale = rows(db)[0]
    ingestor.accept_file(second, SOURCE)  # duplicate policy overwrite: replaced
    [row] = rows(db)
    assert row["header_json"] == HEADER_PENDING
    stale["header_json"] = HEADER_PENDING
    with_headers(db, spool, [stale])  # a reader that still holds the old row ...
    assert rows(db)[0]["header_json"] == HEADER_PENDING, "... does not save the old header"
    with_headers(db, spool, [row])
    assert "OTHER^NAME" in row["header_json"]


def test_retention_makes_the_header_before_it_purges_the_bytes(
    gateway: tuple[Ingestor, Database, FilesystemSpool], tmp_path: Path
) -> None:
    ingestor, db, spool = gateway
    original = made_file(tmp_path / "in")
    staged = ingestor.staging_dir / original.name
    shutil.copyfile(original, staged)
    result = ingestor.accept_file(staged, SOURCE)  # routed nowhere: nothing holds it back
    assert purge_expired(db, spool, retention_hours=0) == 1
    [row] = rows(db)
    assert row["purged_at"] is not None and not spool.exists(str(row["spool_key"]))
    assert row["header_json"] == as_ingest_made_it(original)
    assert result.header.sop_instance_uid == row["sop_instance_uid"]
