"""The header attributes the database indexes, and how to read them safely from a header.

They are the matching and return keys that QIDO-RS needs (PS3.18 Table 10.6.1-5) plus what
routing reports show; each becomes a column so queries run on indexes, never on files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from typing import Any

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.values import convert_value

from gateway.dicom.names import person_name_key

# column name -> DICOM keyword
INDEXED_ATTRIBUTES: dict[str, str] = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
    "referring_physician_name": "ReferringPhysicianName",
    "modality": "Modality",
    "series_number": "SeriesNumber",
    "series_description": "SeriesDescription",
    "performed_procedure_step_start_date": "PerformedProcedureStepStartDate",
    "performed_procedure_step_start_time": "PerformedProcedureStepStartTime",
    "instance_number": "InstanceNumber",
    "rows": "Rows",
    "columns": "Columns",
    "bits_allocated": "BitsAllocated",
    "number_of_frames": "NumberOfFrames",
    "specific_character_set": "SpecificCharacterSet",
}

# Derived columns that are not DICOM attributes: normalised person names for QIDO-RS fuzzy
# matching (column -> the INDEXED_ATTRIBUTES column it is derived from).
SEARCH_COLUMNS: dict[str, str] = {
    "patient_name_search": "patient_name",
    "referring_physician_name_search": "referring_physician_name",
}

_INTEGER_COLUMNS = frozenset(
    {"series_number", "instance_number", "rows", "columns", "bits_allocated", "number_of_frames"}
)
_BULK_THRESHOLD = 1024
_SPECIFIC_CHARACTER_SET = 0x00080005
log = logging.getLogger(__name__)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


# (column, tag, keyword, integer column?), resolved once instead of per instance
_INDEXED_TAGS: tuple[tuple[str, int, str, bool], ...] = tuple(
    (column, _tag(keyword), keyword, column in _INTEGER_COLUMNS)
    for column, keyword in INDEXED_ATTRIBUTES.items()
)


def element_value(dataset: Dataset, tag: int) -> Any:
    """`dataset[tag].value`, or None if the element is absent; may raise on a broken value.

    Why not `dataset[tag]`: it builds and caches a DataElement through pydicom's hooks, which
    costs several times the conversion itself. For a plainly encoded public element (its VR the
    dictionary's) this calls pydicom's own value converter on the raw element with the data
    set's character set, which is what the hooks do; anything else (private or unknown tags,
    UN, deferred values, a conversion error) takes the long way, so the value is the same.
    """
    element = dataset.get_item(tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        expected = _dictionary_vr(tag)
        encodings = (
            dataset.original_character_set if tag != _SPECIFIC_CHARACTER_SET else default_encoding
        )
        if expected is not None and (element.VR or expected) == expected and encodings:
            with contextlib.suppress(Exception):  # else pydicom decides: raise, or read as UN
                return convert_value(expected, element, encodings)
    return dataset[tag].value


@functools.cache
def _dictionary_vr(tag: int) -> str | None:
    """The VR `element_value` may convert `tag` as by itself, or None (ask pydicom)."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    # Ambiguous VRs ("US or SS") and sequences need the data set around them.
    return None if " or " in vr or vr == "SQ" else vr


def indexed_values(dataset: Dataset) -> dict[str, str | int | None]:
    """Column values for one header; an undecodable value becomes None, never an error."""
    values: dict[str, str | int | None] = {}
    for column, tag, keyword, integer in _INDEXED_TAGS:
        values[column] = _read(dataset, tag, keyword, integer=integer)
    for column, source in SEARCH_COLUMNS.items():
        name = values[source]
        values[column] = person_name_key(name if isinstance(name, str) else None)
    return values


def _read(dataset: Dataset, tag: int, keyword: str, *, integer: bool) -> str | int | None:
    try:
        value = element_value(dataset, tag)
    except Exception:  # hostile or broken value: not indexable, still storable
        return None
    if value is None or value == "":
        return None
    if integer:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if keyword == "SpecificCharacterSet" and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    text = str(value).rstrip("\x00 ")
    return text or None


def header_json(dataset: Dataset) -> str:
    """The header as DICOM JSON (PS3.18 F.2), binary values over 1 KiB left out as bulk data.

    Bulk values are marked with a `BulkDataURI` of the form `bulk:<tag>` that the WADO-RS
    metadata endpoint rewrites into a real URL.
    """

    def bulk(element: Any) -> str:
        return f"bulk:{element.tag:08X}"

    try:
        document = dataset.to_json_dict(
            bulk_data_threshold=_BULK_THRESHOLD, bulk_data_element_handler=bulk
        )
    except Exception:
        document = {}
        for tag in list(dataset.keys()):
            try:
                single = Dataset()
                single.add(dataset[tag])
                document.update(
                    single.to_json_dict(
                        bulk_data_threshold=_BULK_THRESHOLD, bulk_data_element_handler=bulk
                    )
                )
            except Exception:  # skip only the element that cannot be represented
                log.debug("left (%08X) out of the header JSON: not representable", tag)
    return json.dumps(document, separators=(",", ":"))
