"""Frames of a stored object, read by seeking, so a 2 GB multi-frame costs one frame of memory.

Why not `pixel_array`: decoding the whole Pixel Data to answer `/frames/7` would load
gigabytes. Native (uncompressed) frames are fixed-size slices at a computable offset;
encapsulated frames are located through the Basic (or Extended) Offset Table by pydicom's
`get_frame`, reading the file object from the start of the value, not the whole value.

`read_frame` returns the frame as stored; `decoded_frame` returns it as native little endian
bytes (decoding a compressed frame when a codec is installed), which is what
`application/octet-stream` frames in Explicit VR Little Endian must hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from gateway.dicom import codecs
from gateway.dicom.structure import element_header_at
from gateway.exceptions import GatewayError, InvalidInputError

_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


class FrameError(GatewayError):
    """The object has no such frame, or its pixel data cannot be read."""


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where the Pixel Data value starts and how frames are laid out in it."""

    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int
    value_offset: int  # first byte of the value (the offset table item if encapsulated)
    length: int | None  # None: undefined length (encapsulated)
    extended_offsets: tuple[bytes, bytes] | None = None

    @property
    def encapsulated(self) -> bool:
        return self.length is None

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated


def pixel_layout(path: Path) -> tuple[Dataset, PixelLayout | None]:
    """The header (without pixel data) and the pixel data layout, if there is pixel data."""
    with path.open("rb") as fp:
        try:
            header = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=64 * 1024)
        except Exception as exc:
            raise FrameError(f"cannot read the stored header: {exc}") from exc
        transfer_syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
        if "Rows" not in header or transfer_syntax == DeflatedExplicitVRLittleEndian:
            return header, None
        position = fp.tell()
        layout = _locate(fp, position, header, transfer_syntax)
    return header, layout


def _locate(fp: BinaryIO, position: int, header: Dataset, syntax: str) -> PixelLayout | None:
    """Parse the element header at `position` (where pydicom stopped before the pixels)."""
    little = syntax != ExplicitVRBigEndian
    implicit = syntax == "1.2.840.10008.1.2"
    try:
        found = element_header_at(fp, position, implicit_vr=implicit, little_endian=little)
    except InvalidInputError as exc:
        raise FrameError(f"the stored object is cut short: {exc}") from exc
    if found is None or found.tag != _PIXEL_DATA:
        return None  # float pixel data or none at all: not served as frames
    length, value_offset = found.length, found.value_offset
    try:
        frames = int(header.get("NumberOfFrames") or 1)
        layout = PixelLayout(
            transfer_syntax=syntax,
            rows=int(header.Rows),
            columns=int(header.Columns),
            samples=int(header.get("SamplesPerPixel") or 1),
            bits_allocated=int(header.BitsAllocated),
            frames=max(frames, 1),
            value_offset=value_offset,
            length=None if length == _UNDEFINED else int(length),
            extended_offsets=_extended_offsets(header),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise FrameError(f"the image pixel attributes are incomplete: {exc}") from exc
    return layout


def _extended_offsets(header: Dataset) -> tuple[bytes, bytes] | None:
    offsets = header.get("ExtendedOffsetTable")
    lengths = header.get("ExtendedOffsetTableLengths")
    if isinstance(offsets, bytes) and isinstance(lengths, bytes):
        return offsets, lengths
    return None


def read_frame(path: Path, layout: PixelLayout, number: int) -> bytes:
    """Frame `number` (1-based) exactly as stored (a compressed bitstream if encapsulated)."""
    _check(layout, number)
    with path.open("rb") as fp:
        if layout.encapsulated:
            fp.seek(layout.value_offset)
            try:
                return get_frame(
                    fp,
                    number - 1,
                    number_of_frames=layout.frames,
                    extended_offsets=layout.extended_offsets,
                )
            except Exception as exc:
                raise FrameError(f"cannot locate frame {number}: {exc}") from exc
        if layout.frame_bits % 8:
            raise FrameError("frames of this object are not byte aligned; use decoded frames")
        size = layout.frame_bits // 8
        fp.seek(layout.value_offset + (number - 1) * size)
        data = fp.read(size)
    if len(data) != size:
        raise FrameError(f"frame {number} is truncated in the stored object")
    return data


def decoded_frame(path: Path, layout: PixelLayout, number: int) -> bytes:
    """Frame `number` as native little endian pixel bytes (decoded if compressed)."""
    _check(layout, number)
    if not layout.encapsulated and layout.frame_bits % 8 == 0:
        data = read_frame(path, layout, number)
        if layout.transfer_syntax == ExplicitVRBigEndian and layout.bits_allocated > 8:
            width = layout.bits_allocated // 8
            data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        return data
    codecs.require()
    try:
        array = pixel_array(str(path), index=number - 1)
    except Exception as exc:
        raise FrameError(f"cannot decode frame {number}: {exc}") from exc
    if layout.bits_allocated == 1:
        return pack_bits(array)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def media_type_of(transfer_syntax: str) -> str:
    """The media type of a frame in `transfer_syntax` (PS3.18 Table 8.7.3-2)."""
    if not UID(transfer_syntax).is_encapsulated:
        return "application/octet-stream"
    return _FRAME_MEDIA.get(transfer_syntax, "application/octet-stream")


_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


def _check(layout: PixelLayout, number: int) -> None:
    if not 1 <= number <= layout.frames:
        raise FrameError(f"frame {number} does not exist; the object has {layout.frames}")
