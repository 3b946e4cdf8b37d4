"""Query/Retrieve identifiers to searches, and hits back to C-FIND response identifiers."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from gateway.db.qido import Hit, Level, Match, where_clause
from gateway.dimse.answers import response_identifier
from gateway.dimse.channel import decode_data_set
from gateway.dimse.identifiers import (
    UTF8,
    IdentifierError,
    Model,
    QRLevel,
    parse_find,
    parse_retrieve,
)
from gateway.exceptions import InvalidInputError


def identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_study_query_maps_every_matching_type_to_the_qido_search() -> None:
    query = parse_find(
        identifier(
            QueryRetrieveLevel="STUDY",
            PatientName="DOE*",
            StudyDate="20240101-20240131",
            StudyTime="-1200",
            StudyInstanceUID=["1.2.3", "1.2.4"],
            ModalitiesInStudy=["CT", "MR"],
            AccessionNumber="",
            PatientID="*",
            NumberOfStudyRelatedInstances="",
        ),
        Model.STUDY_ROOT,
    )
    assert query.level is QRLevel.STUDY and query.search_level is Level.STUDY
    assert set(query.matches) == {
        Match("PatientName", "DOE*"),
        Match("StudyDate", "20240101-20240131"),
        Match("StudyTime", "-1200"),
        Match("StudyInstanceUID", "1.2.3\\1.2.4"),
        Match("ModalitiesInStudy", "CT\\MR"),
    }
    # universal keys (empty, '*') are returned, not matched
    assert {key.keyword for key in query.returned} >= {
        "AccessionNumber",
        "PatientID",
        "NumberOfStudyRelatedInstances",
    }
    assert query.unsupported == ()


def test_keys_we_cannot_match_are_returned_and_reported() -> None:
    query = parse_find(
        identifier(QueryRetrieveLevel="SERIES", InstitutionName="X", SeriesNumber="2"),
        Model.STUDY_ROOT,
    )
    assert query.matches == (Match("SeriesNumber", "2"),)
    assert query.unsupported == ("InstitutionName",)


@pytest.mark.parametrize(
    ("keys", "model", "comment"),
    [
        ({"PatientName": "X"}, Model.STUDY_ROOT, "QueryRetrieveLevel missing"),
        ({"QueryRetrieveLevel": "FOO"}, Model.STUDY_ROOT, "QueryRetrieveLevel 'FOO'"),
        ({"QueryRetrieveLevel": "PATIENT"}, Model.STUDY_ROOT, "Study Root has no PATIENT"),
        (
            {"QueryRetrieveLevel": "PATIENT", "StudyDate": "20240101"},
            Model.PATIENT_ROOT,
            "StudyDate is a STUDY key, not allowed at PATIENT",
        ),
        (
            {"QueryRetrieveLevel": "STUDY", "Modality": "CT"},
            Model.STUDY_ROOT,
            "Modality is a SERIES key, not allowed at STUDY",
        ),
        (
            {"QueryRetrieveLevel": "STUDY", "PatientID": ["A", "B"]},
            Model.STUDY_ROOT,
            "PatientID has 2 values",
        ),
    ],
)
def test_bad_identifiers_are_refused_with_a_comment(
    keys: dict[str, Any], model: Model, comment: str
) -> None:
    with pytest.raises(IdentifierError) as caught:
        parse_find(identifier(**keys), model)
    assert caught.value.status == 0xA900
    assert caught.value.comment.startswith(comment)
    assert len(caught.value.comment) <= 64


def test_patient_keys_are_study_keys_in_study_root() -> None:
    query = parse_find(
        identifier(QueryRetrieveLevel="STUDY", PatientBirthDate="19700101"), Model.STUDY_ROOT
    )
    assert query.matches == (Match("PatientBirthDate", "19700101"),)


def test_retrieve_takes_unique_keys_only() -> None:
    query = parse_retrieve(
        identifier(
            QueryRetrieveLevel="SERIES",
            StudyInstanceUID="1.2.3",
            SeriesInstanceUID=["1.2.3.1", "1.2.3.2"],
            PatientName="",
        ),
        Model.STUDY_ROOT,
    )
    assert query.matches == (
        Match("StudyInstanceUID", "1.2.3"),
        Match("SeriesInstanceUID", "1.2.3.1\\1.2.3.2"),
    )
    with pytest.raises(IdentifierError, match="PatientName is not a unique key"):
        parse_retrieve(
            identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2", PatientName="X"),
            Model.STUDY_ROOT,
        )
    with pytest.raises(IdentifierError, match="SERIES retrieve needs SeriesInstanceUID"):
        parse_retrieve(
            identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"), Model.STUDY_ROOT
        )
    with pytest.raises(IdentifierError, match="no wildcards"):
        parse_retrieve(identifier(QueryRetrieveLevel="PATIENT", PatientID="P*"), Model.PATIENT_ROOT)


def _hit(header: dict[str, Any], **row: Any) -> Hit:
    values = {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.1",
        "sop_instance_uid": "1.2.3.1.1",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "patient_id": "P1",
        "specific_character_set": None,
        "header_json": json.dumps(header),
        **row,
    }
    return Hit(values, instances=7, series=2, studies=1, modalities=["CT", "SR"])


def test_response_holds_the_asked_keys_the_unique_keys_and_the_counts() -> None:
    query = parse_find(
        identifier(
            QueryRetrieveLevel="STUDY",
            PatientName="",
            StudyDate="",
            NumberOfStudyRelatedInstances="",
            NumberOfStudyRelatedSeries="",
            ModalitiesInStudy="",
            RetrieveAETitle="",
            InstitutionName="",
        ),
        Model.STUDY_ROOT,
    )
    header = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
        "00080020": {"vr": "DA", "Value": ["20240115"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulk:7FE00010"},
    }
    answer = response_identifier(query, _hit(header), ae_title="GATEWAY")
    assert answer.QueryRetrieveLevel == "STUDY"
    assert answer.StudyInstanceUID == "1.2.3"  # the level's unique key, though not asked
    assert str(answer.PatientName) == "DOE^JOHN"
    assert answer.StudyDate == "20240115"
    assert answer.NumberOfStudyRelatedInstances == 7
    assert answer.NumberOfStudyRelatedSeries == 2
    assert list(answer.ModalitiesInStudy) == ["CT", "SR"]
    assert answer.RetrieveAETitle == "GATEWAY"
    assert "InstitutionName" in answer and answer.InstitutionName in ("", None)
    assert "SeriesInstanceUID" not in answer and "PatientID" not in answer
    assert "SpecificCharacterSet" not in answer  # all ASCII, default repertoire


def test_patient_level_counts_and_patient_root_unique_keys() -> None:
    query = parse_find(
        identifier(
            QueryRetrieveLevel="PATIENT",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedInstances="",
        ),
        Model.PATIENT_ROOT,
    )
    answer = response_identifier(query, _hit({}), ae_title="GATEWAY")
    assert answer.PatientID == "P1"
    assert answer.NumberOfPatientRelatedStudies == 1
    assert answer.NumberOfPatientRelatedInstances == 7
    assert "StudyInstanceUID" not in answer


def test_answers_in_the_stored_character_set_when_it_holds_the_values() -> None:
    query = parse_find(identifier(QueryRetrieveLevel="STUDY", PatientName=""), Model.STUDY_ROOT)
    latin = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}}
    answer = response_identifier(
        query, _hit(latin, specific_character_set="ISO_IR 100"), ae_title="GW"
    )
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    japanese = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada", "Ideographic": "山田"}]}
    }
    answer = response_identifier(
        query, _hit(japanese, specific_character_set="ISO_IR 100"), ae_title="GW"
    )
    assert answer.SpecificCharacterSet == UTF8
    assert str(answer.PatientName) == "Yamada=山田"


def test_a_uid_list_is_capped() -> None:
    uids = [f"1.2.3.{n}" for n in range(1001)]
    with pytest.raises(IdentifierError, match="more than 1000 values"):
        parse_find(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uids), Model.STUDY_ROOT)
    with pytest.raises(IdentifierError, match="more than 1000 values"):
        parse_retrieve(
            identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uids), Model.STUDY_ROOT
        )


def test_a_value_that_is_no_date_reaches_the_matcher_which_refuses_it() -> None:
    # As received (Implicit VR Little Endian): a StudyDate of bytes that are not text.
    raw = struct.pack("<HHL", 0x0008, 0x0020, 2) + b"\xff\xfe"
    raw += struct.pack("<HHL", 0x0008, 0x0052, 6) + b"STUDY "
    query = parse_find(decode_data_set(raw, ImplicitVRLittleEndian), Model.STUDY_ROOT)
    with pytest.raises(InvalidInputError, match="StudyDate"):  # the service answers 0xA900
        where_clause(query.matches, fuzzy=False, dialect="sqlite")


def test_an_element_pydicom_cannot_decode_is_refused_with_c000() -> None:
    class Broken(Dataset):
        """A received identifier whose (0020,1208) pydicom's converters choke on."""

        def __getitem__(self, key: Any) -> Any:
            if key == 0x00201208:
                raise ValueError("invalid IS")
            return super().__getitem__(key)

    query = Broken()
    query.QueryRetrieveLevel = "STUDY"
    query.NumberOfStudyRelatedInstances = None
    with pytest.raises(IdentifierError) as caught:
        parse_find(query, Model.STUDY_ROOT)
    assert caught.value.status == 0xC000
    assert caught.value.tag == 0x00201208
