"""Frames of a stored object, read by seeking, so a 2 GB multi-frame costs one frame.

Why not `pixel_array` on the object: decoding the whole Pixel Data to answer `/frames/7` would
load gigabytes, and on the S3 spool fetch them. `StoredFrames` works on any seekable file (a
local file, or ranged reads of an S3 object, gateway/spool/ranged.py) and reads the header,
then only the bytes of the frames asked for: native (uncompressed) frames are fixed-size
slices at a computable offset; encapsulated frames are located from the offset tables or
item headers (gateway/dicom/fragments.py).

`read` returns the frame as stored; `decoded` returns it as native little endian bytes
(decoding a compressed frame when a codec is installed), which is what
`application/octet-stream` frames in Explicit VR Little Endian must hold; `array` is the one
frame decoded for rendering. A decode gets a data set holding that frame only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)

from gateway.dicom import codecs
from gateway.dicom.fragments import FragmentError, FrameIndex, read_fragments
from gateway.dicom.structure import element_header_at
from gateway.exceptions import GatewayError, InvalidInputError, SpoolError

if TYPE_CHECKING:
    from numpy.typing import NDArray

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
    photometric: str = ""

    @property
    def encapsulated(self) -> bool:
        return self.length is None

    @property
    def frame_bits(self) -> int:
        samples = self.samples
        if self.photometric == "YBR_FULL_422" and not self.encapsulated:
            samples = 2  # two luminance samples share one Cb and one Cr (PS3.3 C.7.6.3.1.2)
        return self.rows * self.columns * samples * self.bits_allocated


def pixel_layout(fp: BinaryIO) -> tuple[Dataset, PixelLayout | None]:
    """The header (without pixel data) and the pixel data layout, if there is pixel data.

    `fp` is seekable and read from its start; only the header and one element header are read.
    """
    fp.seek(0)
    try:
        header = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=64 * 1024)
    except SpoolError:
        raise  # the spool failed, not the object (an HTTP 503, not a 500)
    except Exception as exc:
        raise FrameError(f"cannot read the stored header: {exc}") from exc
    transfer_syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    if "Rows" not in header or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return header, None
    return header, _locate(fp, fp.tell(), header, transfer_syntax)


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
            photometric=str(header.get("PhotometricInterpretation", "")),
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


class StoredFrames:
    """One stored object opened for frame access: its header, layout and frames.

    Lives for one request over one seekable file (a local file, or ranged reads of an S3
    object): the header is parsed once and the fragments found are remembered, so
    `/frames/1,2,3` walks the item headers once and reads each frame's bytes only.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self.file = fp
        self.header, self.layout = pixel_layout(fp)
        self._index: FrameIndex | None = None

    def read(self, number: int) -> bytes:
        """Frame `number` (1-based) exactly as stored (a compressed bitstream if encapsulated)."""
        layout = self._layout(number)
        if layout.encapsulated:
            return self._encapsulated(layout, number)
        if layout.frame_bits % 8:
            raise FrameError("frames of this object are not byte aligned; use decoded frames")
        size = layout.frame_bits // 8
        self.file.seek(layout.value_offset + (number - 1) * size)
        data = self.file.read(size)
        if len(data) != size:
            raise FrameError(f"frame {number} is truncated in the stored object")
        return data

    def decoded(self, number: int) -> bytes:
        """Frame `number` as native little endian pixel bytes (decoded if compressed)."""
        layout = self._layout(number)
        if not layout.encapsulated and layout.frame_bits % 8 == 0:
            data = self.read(number)
            if layout.transfer_syntax == ExplicitVRBigEndian and layout.bits_allocated > 8:
                width = layout.bits_allocated // 8
                data = np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()
            return data
        array = self.array(number)
        if layout.bits_allocated == 1:
            return pack_bits(array)
        return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()

    def array(self, number: int) -> NDArray[Any]:
        """Frame `number` decoded by pydicom (colour as RGB), from that frame's bytes only."""
        layout = self.layout
        if layout is not None:
            _check(layout, number)
        codecs.require()
        try:
            big_endian = layout is not None and layout.transfer_syntax == ExplicitVRBigEndian
            if layout is None or layout.frame_bits % 8 or big_endian:
                # Float, deflated, bit-packed or big endian pixel data: pydicom reads the
                # header again and then seeks to the frame.
                self.file.seek(0)
                return pixel_array(self.file, index=number - 1)
            if layout.encapsulated:
                single = self._one_frame(layout.transfer_syntax, encapsulate([self.read(number)]))
            else:
                single = self._one_frame(ExplicitVRLittleEndian, self.read(number))
            return pixel_array(single, index=0)
        except (FrameError, SpoolError):
            raise
        except Exception as exc:
            raise FrameError(f"cannot decode frame {number}: {exc}") from exc

    def _layout(self, number: int) -> PixelLayout:
        if self.layout is None:
            raise FrameError("the instance has no pixel data, so it has no frames")
        _check(self.layout, number)
        return self.layout

    def _encapsulated(self, layout: PixelLayout, number: int) -> bytes:
        try:
            if self._index is None:
                self._index = FrameIndex(
                    self.file,
                    value_offset=layout.value_offset,
                    frames=layout.frames,
                    transfer_syntax=layout.transfer_syntax,
                    extended_offsets=layout.extended_offsets,
                )
            fragments = self._index.frame(number)
            if fragments is not None:
                return read_fragments(self.file, fragments)
        except FragmentError as exc:
            raise FrameError(f"cannot locate frame {number}: {exc}") from exc
        # Frames we cannot tell apart by their headers: pydicom reads up to this one.
        self.file.seek(layout.value_offset)
        try:
            return get_frame(
                self.file,
                number - 1,
                number_of_frames=layout.frames,
                extended_offsets=layout.extended_offsets,
            )
        except SpoolError:
            raise
        except Exception as exc:
            raise FrameError(f"cannot locate frame {number}: {exc}") from exc

    def _one_frame(self, transfer_syntax: str, value: bytes) -> Dataset:
        """A data set holding only one frame's Pixel Data `value`, for pydicom to decode."""
        single = Dataset()
        for keyword in _PIXEL_MODULE:
            if keyword in self.header:
                setattr(single, keyword, self.header[keyword].value)
        single.NumberOfFrames = 1
        single.file_meta = FileMetaDataset()
        single.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        single.PixelData = value
        wide = transfer_syntax == ExplicitVRLittleEndian and int(single.BitsAllocated) > 8
        single["PixelData"].VR = "OW" if wide else "OB"
        return single

    def close(self) -> None:
        self.file.close()


# What pydicom reads to decode a frame (PS3.3 C.7.6.3 Image Pixel module).
_PIXEL_MODULE = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


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
