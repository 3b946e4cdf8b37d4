"""QIDO-RS matching in SQL, against a real SQLite database filled through the real ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.config import parse_settings
from gateway.db import Database, open_database
from gateway.db.qido import Level, Match, Search, search, where_clause
from gateway.dicom.names import person_name_key
from gateway.exceptions import InvalidInputError
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool

SOURCE = Source(door="stowrs", actor="test")


def instance(folder: Path, **values: Any) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = values.pop("charset", "ISO_IR 192")
    ds.SOPClassUID = values.pop("sop_class", "1.2.840.10008.5.1.4.1.1.2")
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = values.pop("study")
    ds.SeriesInstanceUID = values.pop("series")
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def db(tmp_path: Path) -> Database:
    settings = parse_settings(
        {"storage": {"spool": "file://spool", "database": "sqlite:///gw.db"}}, base_dir=tmp_path
    )
    database = open_database(settings.storage.database)
    ingestor = Ingestor(settings, FilesystemSpool(tmp_path / "spool"), database)
    incoming = tmp_path / "spool" / ".incoming"
    studies = [
        ("1.2.3.1", "DOE^JOHN", "20240110", "101500", "ACC1", [("CT", 3), ("SR", 1)]),
        ("1.2.3.2", "doe^jane", "20240120", "143000.25", "ACC2", [("MR", 2)]),
        (
            "1.2.3.3",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "20231231",
            "080000",
            "X_1%",
            [("CT", 1)],
        ),
        ("1.2.3.4", "Müller^Jürgen", "20240201", "235959", "ACC4", [("SEG", 1)]),
    ]
    for study, name, date, time, accession, series_list in studies:
        for number, (modality, count) in enumerate(series_list, start=1):
            for index in range(count):
                path = instance(
                    incoming,
                    study=study,
                    series=f"{study}.{number}",
                    PatientName=name,
                    PatientID=f"P-{study[-1]}",
                    StudyDate=date,
                    StudyTime=time,
                    AccessionNumber=accession,
                    Modality=modality,
                    SeriesNumber=number,
                    InstanceNumber=index + 1,
                    ReferringPhysicianName="SMITH^ANNA",
                )
                ingestor.accept_file(path, SOURCE)
    return database


def studies(db: Database, *matches: tuple[str, str], fuzzy: bool = False) -> list[str]:
    result = search(
        db, Search(level=Level.STUDY, matches=[Match(*m) for m in matches], fuzzy=fuzzy)
    )
    return [str(hit.row["study_instance_uid"]) for hit in result.hits]


def test_single_value_and_wildcards_are_case_sensitive(db: Database) -> None:
    assert studies(db, ("PatientName", "DOE^JOHN")) == ["1.2.3.1"]
    assert studies(db, ("PatientName", "DOE*")) == ["1.2.3.1"]
    assert studies(db, ("PatientName", "?OE^*")) == ["1.2.3.1"]
    assert studies(db, ("PatientName", "d?e^ja?e")) == ["1.2.3.2"]
    assert studies(db, ("PatientName", "doe^john")) == []
    assert studies(db, ("PatientName", "*")) == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4"]


def test_like_metacharacters_are_literal(db: Database) -> None:
    assert studies(db, ("AccessionNumber", "X_1%")) == ["1.2.3.3"]
    assert studies(db, ("AccessionNumber", "X?1*")) == ["1.2.3.3"]
    assert studies(db, ("AccessionNumber", "ACC_")) == []


def test_alphabetic_group_matches_multi_group_name(db: Database) -> None:
    assert studies(db, ("PatientName", "Yamada^Tarou")) == ["1.2.3.3"]


def test_fuzzy_person_names(db: Database) -> None:
    assert studies(db, ("PatientName", "doe"), fuzzy=True) == ["1.2.3.1", "1.2.3.2"]
    assert studies(db, ("PatientName", "jo"), fuzzy=True) == ["1.2.3.1"]
    assert studies(db, ("PatientName", "JANE^DOE"), fuzzy=True) == ["1.2.3.2"]
    assert studies(db, ("PatientName", "山田"), fuzzy=True) == ["1.2.3.3"]
    assert studies(db, ("PatientName", "müller"), fuzzy=True) == ["1.2.3.4"]
    assert studies(db, ("PatientName", "oe"), fuzzy=True) == []  # word prefixes only
    assert studies(db, ("ReferringPhysicianName", "anna"), fuzzy=True) == [
        "1.2.3.1",
        "1.2.3.2",
        "1.2.3.3",
        "1.2.3.4",
    ]


def test_date_and_time_ranges(db: Database) -> None:
    assert studies(db, ("StudyDate", "20240101-20240131")) == ["1.2.3.1", "1.2.3.2"]
    assert studies(db, ("StudyDate", "-20240110")) == ["1.2.3.1", "1.2.3.3"]
    assert studies(db, ("StudyDate", "20240201-")) == ["1.2.3.4"]
    assert studies(db, ("StudyDate", "20240120")) == ["1.2.3.2"]
    assert studies(db, ("StudyTime", "1000-1100")) == ["1.2.3.1"]
    assert studies(db, ("StudyTime", "1430")) == ["1.2.3.2"]
    assert studies(db, ("StudyTime", "2359-")) == ["1.2.3.4"]
    with pytest.raises(InvalidInputError):
        studies(db, ("StudyDate", "2024-01-01"))
    with pytest.raises(InvalidInputError):
        studies(db, ("StudyTime", "25h"))


def test_uid_lists(db: Database) -> None:
    assert studies(db, ("StudyInstanceUID", "1.2.3.4,1.2.3.2")) == ["1.2.3.2", "1.2.3.4"]
    assert studies(db, ("StudyInstanceUID", "1.2.3.4\\1.2.3.1")) == ["1.2.3.1", "1.2.3.4"]
    with pytest.raises(InvalidInputError):
        studies(db, ("StudyInstanceUID", "1.2.*"))


def test_modalities_in_study_and_computed_counts(db: Database) -> None:
    result = search(db, Search(level=Level.STUDY, matches=[Match("ModalitiesInStudy", "SR")]))
    [hit] = result.hits
    assert hit.modalities == ["CT", "SR"]
    assert (hit.series, hit.instances) == (2, 4)  # over the whole study, not only SR rows
    assert studies(db, ("ModalitiesInStudy", "MR,SEG")) == ["1.2.3.2", "1.2.3.4"]


def test_series_and_instance_levels(db: Database) -> None:
    series = search(db, Search(level=Level.SERIES, matches=[Match("StudyInstanceUID", "1.2.3.1")]))
    assert [(h.row["modality"], h.instances) for h in series.hits] == [("CT", 3), ("SR", 1)]
    found = search(
        db,
        Search(
            level=Level.INSTANCE,
            matches=[Match("SeriesInstanceUID", "1.2.3.1.1"), Match("InstanceNumber", "2")],
        ),
    )
    assert [h.row["instance_number"] for h in found.hits] == [2]
    with pytest.raises(InvalidInputError):
        search(db, Search(level=Level.INSTANCE, matches=[Match("InstanceNumber", "two")]))


def test_paging_reports_more(db: Database) -> None:
    first = search(db, Search(level=Level.INSTANCE, limit=3))
    rest = search(db, Search(level=Level.INSTANCE, limit=3, offset=3))
    last = search(db, Search(level=Level.INSTANCE, limit=3, offset=6))
    assert (len(first.hits), first.more) == (3, True)
    assert (len(rest.hits), rest.more) == (3, True)
    assert (len(last.hits), last.more) == (2, False)
    ids = [h.row["id"] for h in first.hits + rest.hits + last.hits]
    assert len(set(ids)) == 8


def test_purged_instances_are_invisible(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("UPDATE instances SET purged_at = 1 WHERE modality = 'SR'")
    [hit] = search(
        db, Search(level=Level.STUDY, matches=[Match("StudyInstanceUID", "1.2.3.1")])
    ).hits
    assert (hit.series, hit.instances, hit.modalities) == (1, 3, ["CT"])
    assert studies(db, ("ModalitiesInStudy", "SR")) == []


def test_hostile_values_are_parameters(db: Database) -> None:
    assert studies(db, ("PatientID", "x' OR '1'='1")) == []
    sql, params = where_clause([Match("PatientID", "x' OR 1=1 --")], fuzzy=False, dialect="sqlite")
    assert "OR 1=1" not in sql and params == ["x' OR 1=1 --"]
    sql, params = where_clause([Match("PatientName", "A*")], fuzzy=False, dialect="postgresql")
    assert "LIKE" in sql and params == ["A%", "A%=%"]


def test_person_name_key() -> None:
    assert person_name_key("Yamada^Tarou=山田^太郎") == " YAMADA TAROU 山田 太郎 "
    assert person_name_key("") is None
