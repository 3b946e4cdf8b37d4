"""Query/Retrieve identifiers (PS3.4 Annex C): C-FIND and C-MOVE/C-GET requests to searches.

The answers going back (C-FIND response identifiers) are made in gateway/dimse/answers.py.

Why here and not in the services: the mapping is pure (a Dataset in, a `Search` or a Dataset
out), so it is tested without a network, and C-FIND, C-MOVE and C-GET share it. Matching
itself is QIDO-RS's (gateway/db/qido.py): the same SQL answers both doors.

What is checked (each failure is an `IdentifierError` with a status and a comment an operator
can act on, at most 64 characters as the Error Comment allows):
* Query/Retrieve Level present and one of the model's levels (Study Root has no PATIENT);
* no key of a level below the query level (PS3.4 C.4.1.2.1: e.g. StudyDate in a Patient Root
  PATIENT query); keys of higher levels are matched too (relational queries are answered
  without the extended negotiation);
* values the matcher can read (dates, times, ranges, UIDs, integers); only UID keys and CS
  keys may hold several values, at most `MAX_LIST_VALUES`;
* C-MOVE/C-GET: the level's unique key is given, and no other key has a value.

Keys we cannot match on (no column, or a sequence with items) are returned, not matched; the
pending status is then 0xFF01 ("one or more optional keys were not supported").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.db.qido import MATCHABLE, Kind, Level, Match
from gateway.dicom.attributes import INDEXED_ATTRIBUTES
from gateway.dimse.channel import ChannelError, Request

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

STATUS_IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
STATUS_UNABLE_TO_PROCESS = 0xC000

MAX_LIST_VALUES = 1000  # values in one UID list; more would only strain the database
UTF8 = "ISO_IR 192"


class Model(enum.StrEnum):
    PATIENT_ROOT = "patient_root"
    STUDY_ROOT = "study_root"


MODEL_OF: dict[str, Model] = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}


class QRLevel(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


SEARCH_LEVEL = {
    QRLevel.PATIENT: Level.PATIENT,
    QRLevel.STUDY: Level.STUDY,
    QRLevel.SERIES: Level.SERIES,
    QRLevel.IMAGE: Level.INSTANCE,
}
UNIQUE_KEY = {
    QRLevel.PATIENT: "PatientID",
    QRLevel.STUDY: "StudyInstanceUID",
    QRLevel.SERIES: "SeriesInstanceUID",
    QRLevel.IMAGE: "SOPInstanceUID",
}
UNIQUE_COLUMN = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
}

# The level each standard key belongs to (PS3.4 C.6.1.1, C.6.2.1). Keys not listed may be
# asked at any level; they are returned from the stored header, never matched.
_PATIENT_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "ReferencedPatientSequence",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "EthnicGroup",
        "PatientComments",
        "PatientSpeciesDescription",
        "PatientBreedDescription",
        "ResponsiblePerson",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    }
)
_STUDY_KEYS = frozenset(
    {
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyID",
        "StudyInstanceUID",
        "ReferringPhysicianName",
        "StudyDescription",
        "ProcedureCodeSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "AdmittingDiagnosesDescription",
        "ReferencedStudySequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "Occupation",
        "AdditionalPatientHistory",
        "OtherStudyNumbers",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "AnatomicRegionsInStudyCodeSequence",
    }
)
_SERIES_KEYS = frozenset(
    {
        "Modality",
        "SeriesNumber",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "Laterality",
        "ProtocolName",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID",
        "RequestAttributesSequence",
        "OperatorsName",
        "PerformingPhysicianName",
    }
)
_IMAGE_KEYS = frozenset(
    {
        "InstanceNumber",
        "SOPInstanceUID",
        "SOPClassUID",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "ContentDate",
        "ContentTime",
        "ImageType",
        "AcquisitionNumber",
    }
)
# Answered by the gateway itself, or describing the request: allowed at every level.
_ANY_LEVEL = frozenset(
    {
        "SpecificCharacterSet",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "QueryRetrieveView",
    }
)
COUNTS = {
    "NumberOfPatientRelatedStudies": (QRLevel.PATIENT, "studies"),
    "NumberOfPatientRelatedSeries": (QRLevel.PATIENT, "series"),
    "NumberOfPatientRelatedInstances": (QRLevel.PATIENT, "instances"),
    "NumberOfStudyRelatedSeries": (QRLevel.STUDY, "series"),
    "NumberOfStudyRelatedInstances": (QRLevel.STUDY, "instances"),
    "NumberOfSeriesRelatedInstances": (QRLevel.SERIES, "instances"),
}
COLUMN_OF = {keyword: column for column, keyword in INDEXED_ATTRIBUTES.items()}
_LIST_KINDS = frozenset({Kind.UID, Kind.CODE, Kind.MODALITIES})


class IdentifierError(ValueError):
    """An identifier we cannot answer; `status` and `comment` go into the failure response."""

    def __init__(self, comment: str, *, status: int = STATUS_IDENTIFIER_MISMATCH, tag: int = 0):
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tag = tag  # the Offending Element, 0 when none

    def response_elements(self) -> dict[str, object]:
        elements: dict[str, object] = {"ErrorComment": self.comment}
        if self.tag:
            elements["OffendingElement"] = [self.tag]
        return elements


@dataclass(frozen=True, slots=True)
class ReturnKey:
    tag: int
    keyword: str
    vr: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FindQuery:
    """A C-FIND identifier, read: what to match and what to return."""

    model: Model
    level: QRLevel
    matches: tuple[Match, ...]
    returned: tuple[ReturnKey, ...]
    unsupported: tuple[str, ...] = ()  # keys with a value we do not match on
    query: Mapping[str, str] = field(default_factory=dict)  # for the audit trail

    @property
    def search_level(self) -> Level:
        return SEARCH_LEVEL[self.level]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrieveQuery:
    """A C-MOVE or C-GET identifier, read: the unique keys naming what to send."""

    model: Model
    level: QRLevel
    matches: tuple[Match, ...]
    query: Mapping[str, str] = field(default_factory=dict)


# -- requests ----------------------------------------------------------------------------------


def read_identifier(request: Request) -> Dataset:
    """The request's identifier; one that cannot be decoded is refused (0xC000), the
    association goes on (its message framing was fine)."""
    try:
        return request.identifier()
    except ChannelError as exc:
        raise IdentifierError(
            "the identifier cannot be decoded", status=STATUS_UNABLE_TO_PROCESS
        ) from exc


def parse_find(identifier: Dataset, model: Model) -> FindQuery:
    """Read a C-FIND identifier; raises IdentifierError (see the module docstring)."""
    level = _level(identifier, model)
    matches: list[Match] = []
    returned: list[ReturnKey] = []
    unsupported: list[str] = []
    query: dict[str, str] = {}
    for element in _elements(identifier):
        if element.tag.group == 0x0002 or element.tag.is_private or not element.keyword:
            continue  # private and unknown keys are neither matched nor returned
        keyword = element.keyword
        if keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        _check_key_level(keyword, element.tag, level, model)
        returned.append(ReturnKey(int(element.tag), keyword, _vr(element)))
        if element.VR == "SQ":
            if any(len(item) for item in element.value or ()):
                unsupported.append(keyword)  # sequence matching is not supported
            continue
        value = _value(element)
        if value is None:
            continue  # universal matching: only asks for the attribute back
        query[keyword] = value[:64]
        if keyword in MATCHABLE:
            matches.append(Match(keyword, value))
        else:
            unsupported.append(keyword)
    return FindQuery(
        model=model,
        level=level,
        matches=tuple(matches),
        returned=tuple(returned),
        unsupported=tuple(unsupported),
        query=query,
    )


def parse_retrieve(identifier: Dataset, model: Model) -> RetrieveQuery:
    """Read a C-MOVE/C-GET identifier: the unique key of the level (one value or a UID list)
    and, optionally, unique keys of the levels above (one value each)."""
    level = _level(identifier, model)
    allowed = {UNIQUE_KEY[each] for each in QRLevel if each <= level}
    allowed.add("PatientID")  # Study Root has no patient level, but the key narrows safely
    matches: list[Match] = []
    query: dict[str, str] = {}
    for element in _elements(identifier):
        if element.tag.group == 0x0002 or element.tag.is_private:
            continue
        keyword = element.keyword
        if keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if element.VR == "SQ":
            if element.value:
                raise IdentifierError(
                    f"{keyword}: no sequences in a retrieve", tag=int(element.tag)
                )
            continue
        value = _value(element)
        if value is None:
            continue
        if keyword not in allowed:
            raise IdentifierError(
                f"{keyword or element.tag} is not a unique key; retrieve by UIDs only",
                tag=int(element.tag),
            )
        if keyword != UNIQUE_KEY[level] and "\\" in value:
            raise IdentifierError(f"{keyword} above the level takes one value", tag=element.tag)
        if keyword == "PatientID" and ("*" in value or "?" in value):
            raise IdentifierError("PatientID: no wildcards in a retrieve", tag=element.tag)
        query[keyword] = value[:64]
        matches.append(Match(keyword, value))
    unique = UNIQUE_KEY[level]
    if unique not in query:
        raise IdentifierError(
            f"{level.name} retrieve needs {unique}", tag=tag_for_keyword(unique) or 0
        )
    return RetrieveQuery(model=model, level=level, matches=tuple(matches), query=query)


def _elements(identifier: Dataset) -> list[DataElement]:
    """The identifier's elements, decoded; one pydicom cannot decode is refused (0xC000)."""
    elements = []
    for tag in list(identifier.keys()):
        try:
            elements.append(identifier[tag])
        except Exception as exc:  # pydicom raises what its converters meet
            raise IdentifierError(
                f"element {tag} of the identifier cannot be decoded",
                status=STATUS_UNABLE_TO_PROCESS,
                tag=int(tag),
            ) from exc
    return elements


def _level(identifier: Dataset, model: Model) -> QRLevel:
    try:
        raw = identifier.get("QueryRetrieveLevel")
    except Exception:  # an undecodable value: treated as missing
        raw = None
    text = str(raw or "").strip().upper()
    if not text:
        raise IdentifierError(
            "QueryRetrieveLevel missing; use PATIENT, STUDY, SERIES or IMAGE", tag=0x00080052
        )
    if text not in QRLevel.__members__:
        raise IdentifierError(
            f"QueryRetrieveLevel {text[:16]!r}: use PATIENT/STUDY/SERIES/IMAGE", tag=0x00080052
        )
    level = QRLevel[text]
    if level is QRLevel.PATIENT and model is Model.STUDY_ROOT:
        raise IdentifierError("Study Root has no PATIENT level; use Patient Root", tag=0x00080052)
    return level


def key_level(keyword: str, model: Model) -> QRLevel | None:
    """The level `keyword` belongs to in `model`, None if any level may ask for it."""
    if keyword in _ANY_LEVEL:
        return None
    if keyword in _PATIENT_KEYS:
        return QRLevel.PATIENT if model is Model.PATIENT_ROOT else QRLevel.STUDY
    if keyword in _STUDY_KEYS:
        return QRLevel.STUDY
    if keyword in _SERIES_KEYS:
        return QRLevel.SERIES
    if keyword in _IMAGE_KEYS:
        return QRLevel.IMAGE
    return None


def _check_key_level(keyword: str, tag: int, level: QRLevel, model: Model) -> None:
    belongs = key_level(keyword, model)
    if belongs is not None and belongs > level:
        raise IdentifierError(
            f"{keyword} is a {belongs.name} key, not allowed at {level.name}", tag=int(tag)
        )


def _vr(element: DataElement) -> str:
    vr = str(element.VR)
    if " or " in vr:  # ambiguous in the dictionary, e.g. "US or SS": the request's is ours
        return vr.split(" or ")[0]
    return vr


def _value(element: DataElement) -> str | None:
    """The matching value as text, None for universal matching (empty or '*')."""
    try:
        value: Any = element.value
        if isinstance(value, bytes | bytearray):
            raise IdentifierError(f"{element.keyword}: binary values cannot be matched")
        if isinstance(value, MultiValue | list | tuple):
            values = [str(item) for item in value]
        else:
            values = [] if value is None else [str(value)]
    except IdentifierError:
        raise
    except Exception as exc:  # pydicom raises what its converters meet
        raise IdentifierError(
            f"the value of {element.keyword or element.tag} cannot be read",
            tag=int(element.tag),
        ) from exc
    values = [item.strip() for item in values]
    if not values or values == [""] or values == ["*"]:
        return None
    if len(values) > 1:
        attribute = MATCHABLE.get(element.keyword)
        if attribute is None or attribute.kind not in _LIST_KINDS:
            raise IdentifierError(
                f"{element.keyword} has {len(values)} values; only UID keys take a list",
                tag=int(element.tag),
            )
        if len(values) > MAX_LIST_VALUES:
            raise IdentifierError(
                f"{element.keyword}: more than {MAX_LIST_VALUES} values in one request",
                tag=int(element.tag),
            )
    return "\\".join(values)


def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)
