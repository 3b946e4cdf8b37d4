"""Read just enough of a stored DICOM file to route, index and check it.

Only the header is decoded (pixel data is never loaded; large values are deferred); the
structure walker proves the whole file is complete. Anything wrong becomes InvalidInputError
with the DICOM status that describes it, so a door can answer the sender precisely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.dicom.structure import check_structure, data_set_offset
from gateway.dicom.uids import validate_uid
from gateway.exceptions import InvalidInputError

# Wire data is often slightly non-conformant (padding, VR quirks); we store it as received and
# report real problems ourselves, so pydicom's per-value validation warnings are noise here.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_DEFER_BYTES = 64 * 1024
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_SOP_CLASS_MISMATCH = 0xA900


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The checked identity of one stored instance plus its header data set."""

    dataset: Dataset
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    data_set_offset: int
    notes: tuple[str, ...] = ()  # accepted oddities worth telling the operator about


def read_header(path: Path) -> InstanceHeader:
    """Parse and check the Part 10 file at `path`; raise InvalidInputError if unacceptable."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, defer_size=_DEFER_BYTES)
    except Exception as exc:  # pydicom raises many types on hostile input
        raise InvalidInputError(f"cannot parse the DICOM header: {exc}") from exc
    meta = dataset.file_meta
    transfer_syntax = validate_uid(meta.get("TransferSyntaxUID"), "TransferSyntaxUID")
    sop_class = validate_uid(_value(dataset, "SOPClassUID"), "SOPClassUID")
    sop_instance = validate_uid(_value(dataset, "SOPInstanceUID"), "SOPInstanceUID")
    study = validate_uid(_value(dataset, "StudyInstanceUID"), "StudyInstanceUID")
    series = validate_uid(_value(dataset, "SeriesInstanceUID"), "SeriesInstanceUID")
    media_class = meta.get("MediaStorageSOPClassUID")
    if media_class is not None and str(media_class).rstrip("\x00 ") != sop_class:
        raise InvalidInputError(
            f"the data set's SOPClassUID {sop_class} differs from the announced SOP class "
            f"{media_class}",
            dicom_status=STATUS_SOP_CLASS_MISMATCH,
        )
    notes: list[str] = []
    media_instance = meta.get("MediaStorageSOPInstanceUID")
    if media_instance is not None and str(media_instance).rstrip("\x00 ") != sop_instance:
        # PACS accept this (stale file meta is common); the data set's UID is what every
        # destination will index, so it is ours too, and the difference is reported.
        notes.append(
            f"the data set's SOPInstanceUID {sop_instance} differs from the announced "
            f"instance {str(media_instance)[:64]}; the data set's UID is used"
        )
    with path.open("rb") as fp:
        offset = data_set_offset(fp)
        if transfer_syntax != DeflatedExplicitVRLittleEndian:
            check_structure(
                fp,
                offset,
                implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
                little_endian=transfer_syntax != ExplicitVRBigEndian,
            )
    return InstanceHeader(
        dataset=dataset,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=transfer_syntax,
        data_set_offset=offset,
        notes=tuple(notes),
    )


def _value(dataset: Dataset, keyword: str) -> object:
    try:
        return dataset.get(keyword)
    except Exception as exc:  # a malformed element fails on first access
        raise InvalidInputError(f"{keyword} cannot be decoded: {exc}") from exc
