"""C-FIND response identifiers from search hits, and the Failed SOP Instance UID List.

The keys asked for are valued from the first instance received in the matching group (its
stored DICOM JSON header, as QIDO-RS answers), the counts from the search; each answer is
written in the stored object's character set when that can hold every value, else in UTF-8.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from gateway.db.engine import Row
from gateway.db.qido import Hit
from gateway.dimse.identifiers import (
    COLUMN_OF,
    COUNTS,
    UNIQUE_COLUMN,
    UNIQUE_KEY,
    UTF8,
    FindQuery,
    Model,
    QRLevel,
    ReturnKey,
    tag_of,
)


def response_identifier(query: FindQuery, hit: Hit, *, ae_title: str) -> Dataset:
    """The C-FIND response identifier for one match: the keys asked for, with the level's
    unique keys, in the stored object's character set when it can hold every value, else in
    UTF-8 (Specific Character Set says which)."""
    row = hit.row
    header = _header(row)
    answer = Dataset()
    wanted: list[ReturnKey] = list(query.returned)
    asked = {key.keyword for key in wanted}
    for level in QRLevel:
        unique = UNIQUE_KEY[level]
        if level <= query.level and unique not in asked:
            if level is QRLevel.PATIENT and query.model is Model.STUDY_ROOT:
                continue
            wanted.append(ReturnKey(tag_of(unique), unique, str(dictionary_VR(unique))))
    for key in wanted:
        answer.add(_answer_element(key, query, hit, row, header, ae_title))
    answer.QueryRetrieveLevel = query.level.name
    _choose_character_set(answer, row.get("specific_character_set"))
    return answer


def _answer_element(
    key: ReturnKey, query: FindQuery, hit: Hit, row: Row, header: Mapping[str, Any], ae: str
) -> DataElement:
    keyword = key.keyword
    if keyword in COUNTS:
        level, attribute = COUNTS[keyword]
        if level is query.level:
            return DataElement(key.tag, "IS", str(getattr(hit, attribute)))
        return DataElement(key.tag, key.vr, None)
    if keyword == "ModalitiesInStudy" and query.level is QRLevel.STUDY:
        return DataElement(key.tag, "CS", list(hit.modalities) or None)
    if keyword == "RetrieveAETitle":
        return DataElement(key.tag, "AE", ae)
    if keyword == "InstanceAvailability":
        return DataElement(key.tag, "CS", "ONLINE")
    column = UNIQUE_COLUMN.get(keyword)
    if column is not None and row.get(column) is not None:
        return DataElement(key.tag, key.vr, str(row[column]))
    stored = _from_header(key.tag, header)
    if stored is not None:
        return stored
    column = COLUMN_OF.get(keyword)
    if column is not None and row.get(column) is not None:  # header not made (unreadable)
        value = row[column]
        return DataElement(key.tag, key.vr, value if isinstance(value, int) else str(value))
    return DataElement(key.tag, key.vr, [] if key.vr == "SQ" else None)


def _header(row: Row) -> Mapping[str, Any]:
    try:
        document = json.loads(str(row.get("header_json") or "{}"))
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _from_header(tag: int, header: Mapping[str, Any]) -> DataElement | None:
    key = f"{tag:08X}"
    value = header.get(key)
    if not isinstance(value, dict) or "BulkDataURI" in value:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stored oddity is the modality's, not ours
            return Dataset.from_json({key: value})[tag]
    except Exception:  # a value pydicom cannot rebuild is answered empty
        return None


def _choose_character_set(answer: Dataset, stored: object) -> None:
    candidate = str(stored) if stored else ""
    if candidate:
        answer.SpecificCharacterSet = candidate.split("\\") if "\\" in candidate else candidate
    if _encodes(answer):
        return
    answer.SpecificCharacterSet = UTF8


def _encodes(answer: Dataset) -> bool:
    """True when every text value of `answer` can be written in its character set."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            buffer = DicomBytesIO()
            buffer.is_little_endian = True
            buffer.is_implicit_VR = False
            write_dataset(buffer, answer)
    except Exception:  # unencodable text (UserWarning raised), unknown character set
        return False
    return True


def failed_uid_list(uids: Sequence[str]) -> Dataset:
    """The identifier of a final C-MOVE/C-GET response with failures (0008,0058)."""
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = list(uids)
    return identifier
