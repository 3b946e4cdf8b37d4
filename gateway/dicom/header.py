"""Read just enough of a stored DICOM file to route, index and check it.

Only the header is decoded, from one read of the file's first 64 KB that also feeds the
structure walker (pixel data is never loaded; a longer header is read from the file with large
values deferred); the walker proves the whole file is complete. Anything wrong becomes
InvalidInputError with the DICOM status that describes it, so a door can answer the sender
precisely.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.dicom.attributes import element_value
from gateway.dicom.structure import check_structure, data_set_offset
from gateway.dicom.uids import validate_uid
from gateway.exceptions import InvalidInputError

# Wire data is often slightly non-conformant (padding, VR quirks); we store it as received and
# report real problems ourselves, so pydicom's per-value validation warnings are noise here.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_DEFER_BYTES = 64 * 1024
_HEAD_BYTES = 64 * 1024  # most headers (and small objects entirely) fit in one read
_PIXEL_GROUP = (b"\xe0\x7f", b"\x7f\xe0")  # (7FE0,xxxx) little and big endian
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_SOP_CLASS_MISMATCH = 0xA900
_MEDIA_CLASS, _MEDIA_INSTANCE, _TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010
_IDENTITY = (
    ("SOPClassUID", 0x00080016),
    ("SOPInstanceUID", 0x00080018),
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
)


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
    with path.open("rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        head = fp.read(_HEAD_BYTES)
        try:
            dataset = _from_head(head, whole=len(head) == size)
            if dataset is None:  # a header longer than `head`: pydicom reads the file
                dataset = pydicom.dcmread(path, stop_before_pixels=True, defer_size=_DEFER_BYTES)
        except Exception as exc:  # pydicom raises many types on hostile input
            raise InvalidInputError(f"cannot parse the DICOM header: {exc}") from exc
        return _check(fp, head, dataset)


def read_dataset(stream: BinaryIO) -> Dataset:
    """The data set of the Part 10 object in `stream` up to its pixel data.

    For streams that cannot seek (an S3 object): reads as little of the object as it can.
    """
    data = _read_up_to(stream, _HEAD_BYTES)
    whole = len(data) < _HEAD_BYTES
    while True:
        dataset = _from_head(data, whole=whole)
        if dataset is not None:
            return dataset
        more = _read_up_to(stream, len(data))  # doubling: few parses of a long header
        whole = len(more) < len(data)
        data += more


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream (a raw stream may return less)."""
    chunks: list[bytes] = []
    missing = size
    while missing > 0 and (chunk := stream.read(missing)):
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _from_head(head: bytes, *, whole: bool) -> Dataset | None:
    """The data set up to the pixel data parsed from `head` (the file's first bytes), or None
    if `head` (not the `whole` file) may not hold all of it.

    Why: one read of the file serves pydicom and the structure walk, and pydicom parses from
    memory faster than from a file. A partial `head` is trusted only if pydicom stopped at a
    pixel data tag inside it: it reads in order, so everything before that was there.
    """
    buffer = io.BytesIO(head)
    try:
        dataset = pydicom.dcmread(buffer, stop_before_pixels=True)
    except Exception:
        if whole:
            raise
        return None  # perhaps only cut short by the end of `head`
    stopped = buffer.tell()
    if whole or head[stopped : stopped + 2] in _PIXEL_GROUP:
        # Nothing was deferred, so the data set needs no source to read from: let the header
        # go (a batch of instances keeps its data sets until it commits).
        if isinstance(dataset, FileDataset):
            dataset.buffer = None
        return dataset
    return None


def _check(fp: BinaryIO, head: bytes, dataset: Dataset) -> InstanceHeader:
    meta = dataset.file_meta
    transfer_syntax = validate_uid(element_value(meta, _TRANSFER_SYNTAX), "TransferSyntaxUID")
    sop_class, sop_instance, study, series = (
        validate_uid(_value(dataset, tag, keyword), keyword) for keyword, tag in _IDENTITY
    )
    media_class = element_value(meta, _MEDIA_CLASS)
    if media_class is not None and str(media_class).rstrip("\x00 ") != sop_class:
        raise InvalidInputError(
            f"the data set's SOPClassUID {sop_class} differs from the announced SOP class "
            f"{media_class}",
            dicom_status=STATUS_SOP_CLASS_MISMATCH,
        )
    notes: list[str] = []
    media_instance = element_value(meta, _MEDIA_INSTANCE)
    if media_instance is not None and str(media_instance).rstrip("\x00 ") != sop_instance:
        # PACS accept this (stale file meta is common); the data set's UID is what every
        # destination will index, so it is ours too, and the difference is reported.
        notes.append(
            f"the data set's SOPInstanceUID {sop_instance} differs from the announced "
            f"instance {str(media_instance)[:64]}; the data set's UID is used"
        )
    offset = data_set_offset(fp, head=head)
    if transfer_syntax != DeflatedExplicitVRLittleEndian:
        check_structure(
            fp,
            offset,
            implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
            little_endian=transfer_syntax != ExplicitVRBigEndian,
            head=head,
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


def _value(dataset: Dataset, tag: int, keyword: str) -> object:
    try:
        return element_value(dataset, tag)
    except Exception as exc:  # a malformed element fails on first access
        raise InvalidInputError(f"{keyword} cannot be decoded: {exc}") from exc
