"""Part 10 in, Part 10 out, with the header edited and the Pixel Data copied as bytes.

Why: coercion and de-identification change attributes, never pixel values, so there is no
reason to load (let alone decode) a 2 GB multi-frame object to send it de-identified. The
header (everything before Pixel Data) is read with pydicom, edited, and written in the stored
transfer syntax; the Pixel Data element is then copied from the source in 1 MiB reads, so
memory does not grow with object size. Elements after Pixel Data (a Digital Signatures
Sequence, trailing padding: rare and small) are read, edited with the header and written
after the pixels.

A Deflated Explicit VR Little Endian object is compressed as a whole, so nothing can be
copied: it is read and written whole (`rewrite_whole`), as transcoding does.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

import gateway.dicom.header  # noqa: F401  (read wire data with ingest's validation rules)
from gateway.dicom.structure import element_header_at
from gateway.exceptions import InvalidInputError
from gateway.transform.errors import TransformError

T = TypeVar("T")

CHUNK = 1024 * 1024
MAX_TRAILER = 16 * 1024 * 1024
"""Elements after Pixel Data are read into memory; more than this is refused."""

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD


def rewrite(source: Path, target: BinaryIO, edit: Callable[[Dataset], T]) -> T:
    """Write `source` to `target` with `edit` applied to its header; returns what `edit` did.

    `edit` gets the data set without Pixel Data (with `file_meta`, and with any elements
    that follow the pixels) and changes it in place.
    """
    with source.open("rb") as fp:
        try:
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            syntax = UID(str(header.file_meta.TransferSyntaxUID))
        except Exception as exc:  # untrusted bytes: pydicom raises many kinds
            raise TransformError(f"the stored instance is not readable DICOM: {exc}") from exc
        if syntax == DeflatedExplicitVRLittleEndian:
            fp.seek(0)
            return rewrite_whole(fp, target, edit)
        implicit = syntax == ImplicitVRLittleEndian
        little = syntax != ExplicitVRBigEndian
        start = fp.tell()
        found = _pixel_element(fp, start, implicit=implicit, little=little)
        pixel_tag, end = found if found is not None else (None, start)
        if pixel_tag is not None:
            for element in _trailer(fp, end, implicit=implicit, little=little):
                header[element.tag] = element
        result = edit(header)
        after = Dataset()
        if pixel_tag is not None:
            tags = list(header.keys())  # a Dataset iterates over elements, not tags
            for tag in [tag for tag in tags if tag > pixel_tag]:
                after[tag] = header[tag]
                del header[tag]
        dcmwrite(target, header, enforce_file_format=True)
        if pixel_tag is not None:
            _copy(fp, target, start, end)
        if len(after):
            out = DicomFileLike(target)
            out.is_little_endian = little
            out.is_implicit_VR = implicit
            write_dataset(out, after)
    return result


def rewrite_whole(source: BinaryIO, target: BinaryIO, edit: Callable[[Dataset], T]) -> T:
    """Read all of `source`, edit it, write it in its own transfer syntax (memory: the object)."""
    try:
        dataset = pydicom.dcmread(source)
    except Exception as exc:
        raise TransformError(f"the stored instance is not readable DICOM: {exc}") from exc
    result = edit(dataset)
    dcmwrite(target, dataset, enforce_file_format=True)
    return result


def _pixel_element(
    fp: BinaryIO, position: int, *, implicit: bool, little: bool
) -> tuple[int, int] | None:
    """(tag, end offset) of the pixel data element at `position`, or None if there is none."""
    try:
        found = element_header_at(fp, position, implicit_vr=implicit, little_endian=little)
    except InvalidInputError as exc:
        raise TransformError(str(exc)) from exc
    if found is None:
        return None
    tag, length, value = found.tag, found.length, found.value_offset
    if tag not in _PIXEL_TAGS:
        group, element = tag >> 16, tag & 0xFFFF
        raise TransformError(
            f"expected Pixel Data at byte {position}, found ({group:04X},{element:04X})"
        )
    if length != _UNDEFINED:
        return tag, value + length
    # Encapsulated: items (always little endian) up to the sequence delimiter.
    position = value
    while True:
        fp.seek(position)
        item = fp.read(8)
        if len(item) < 8:
            raise _truncated(position)
        group, element, item_length = struct.unpack("<HHI", item)
        item_tag = group << 16 | element
        if item_tag == _SEQUENCE_END:
            return tag, position + 8
        if item_tag != _ITEM or item_length == _UNDEFINED:
            raise TransformError(
                f"encapsulated Pixel Data holds ({group:04X},{element:04X}) at byte {position}, "
                "not an item or the sequence delimiter"
            )
        position += 8 + item_length


def _trailer(fp: BinaryIO, position: int, *, implicit: bool, little: bool) -> Dataset:
    size = fp.seek(0, io.SEEK_END) - position  # not read(MAX + 1): that allocates MAX bytes
    if size <= 0:
        return Dataset()
    if size > MAX_TRAILER:
        raise TransformError(
            f"{size} bytes follow the Pixel Data, more than {MAX_TRAILER}; such objects are not "
            "transformed (send them to a destination without a transform)"
        )
    fp.seek(position)
    raw = fp.read(size)
    try:
        return read_dataset(io.BytesIO(raw), implicit, little)
    except Exception as exc:
        raise TransformError(f"the elements after Pixel Data are not readable: {exc}") from exc


def _copy(fp: BinaryIO, target: BinaryIO, start: int, end: int) -> None:
    fp.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = fp.read(min(CHUNK, remaining))
        if not chunk:
            raise _truncated(end - remaining)
        target.write(chunk)
        remaining -= len(chunk)


def _truncated(position: int) -> TransformError:
    return TransformError(f"the stored instance ends inside its Pixel Data (byte {position})")
