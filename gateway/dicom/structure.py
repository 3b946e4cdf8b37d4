"""Walk the element structure of a DICOM file without reading values.

pydicom parses the header we need but, with deferred or skipped values, it cannot tell that a
file was cut short inside a large value (pixel data, an encapsulated document). This walker
follows tags and lengths from the start of the data set to the end of the file and fails if a
length points past the end or a delimiter is missing. It seeks over values, reading the file in
windows of `_WINDOW` bytes, so it costs a read or two whatever the object's size.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from gateway.exceptions import InvalidInputError

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_MAX_DEPTH = 32
_WINDOW = 64 * 1024


@dataclass(frozen=True, slots=True)
class ElementHeader:
    """Tag, value length (UNDEFINED_LENGTH for an encapsulated or SQ value) and where the
    value starts, of one element in a file."""

    tag: int
    length: int
    value_offset: int


UNDEFINED_LENGTH = _UNDEFINED


def element_header_at(
    fp: BinaryIO, position: int, *, implicit_vr: bool, little_endian: bool
) -> ElementHeader | None:
    """The header of the element starting at `position`; None at the end of the file.

    Raises InvalidInputError when the file ends inside the header.
    """
    prefix = "<" if little_endian else ">"
    fp.seek(position)
    raw = fp.read(12)
    if len(raw) < 8:
        if raw:
            raise _truncated(position)
        return None
    group, element = struct.unpack(prefix + "HH", raw[:4])
    if implicit_vr:
        (length,) = struct.unpack(prefix + "I", raw[4:8])
        value = position + 8
    elif raw[4:6] in _LONG_VRS:
        if len(raw) < 12:
            raise _truncated(position)
        (length,) = struct.unpack(prefix + "I", raw[8:12])
        value = position + 12
    else:
        (length,) = struct.unpack(prefix + "H", raw[6:8])
        value = position + 8
    return ElementHeader(group << 16 | element, int(length), value)


def data_set_offset(fp: BinaryIO, *, head: bytes = b"") -> int:
    """Return the byte offset where the data set starts, after preamble and file meta.

    `head` is the start of the file if the caller has read it already (saves reading it again).
    """
    reader = _Reader(fp, head)
    preamble = reader.read(0, 132)
    if len(preamble) < 132 or preamble[128:132] != b"DICM":
        raise InvalidInputError("not a DICOM Part 10 file: the 'DICM' prefix is missing")
    position = 132
    while True:
        raw = reader.read(position, 8)
        if len(raw) < 8:
            return position
        group, _element = struct.unpack("<HH", raw[:4])
        if group != 0x0002:
            return position
        vr = raw[4:6]
        if vr in _LONG_VRS:
            extra = reader.read(position + 8, 4)
            if len(extra) < 4:
                raise _truncated(position)
            (length,) = struct.unpack("<I", extra)
            position += 12 + length
        else:
            (length,) = struct.unpack("<H", raw[6:8])
            position += 8 + length


def check_structure(
    fp: BinaryIO, offset: int, *, implicit_vr: bool, little_endian: bool, head: bytes = b""
) -> None:
    """Raise InvalidInputError if the data set from `offset` is truncated or malformed.

    `head` is the start of the file if the caller has read it already.
    """
    end = fp.seek(0, os.SEEK_END)
    walker = _Walker(_Reader(fp, head), end, implicit_vr=implicit_vr, little_endian=little_endian)
    position = walker.walk_elements(offset, end, depth=0, until=None)
    if position != end:
        raise InvalidInputError(f"data set ends at byte {position} but the file has {end} bytes")


class _Reader:
    """Reads at absolute positions, served from one window of the file held in memory.

    A seek and a read per element cost more than the walk itself; with a window, a header
    costs one read (none if the caller passes the bytes it read) and a large value one more.
    """

    def __init__(self, fp: BinaryIO, head: bytes) -> None:
        self.fp = fp
        self._start = 0
        self._window = head

    def read(self, position: int, size: int) -> bytes:
        """Up to `size` bytes at `position` (fewer only at the end of the file)."""
        offset = position - self._start
        if offset < 0 or offset + size > len(self._window):
            self.fp.seek(position)
            self._start, self._window, offset = position, self.fp.read(max(size, _WINDOW)), 0
        return self._window[offset : offset + size]


class _Walker:
    def __init__(
        self, reader: _Reader, end: int, *, implicit_vr: bool, little_endian: bool
    ) -> None:
        self.reader = reader
        self.end = end
        self.implicit_vr = implicit_vr
        prefix = "<" if little_endian else ">"
        self._explicit = struct.Struct(prefix + "HH2sH")  # tag, VR, short length
        self._implicit = struct.Struct(prefix + "HHI")  # tag, long length (also items)
        self._long = struct.Struct(prefix + "I")

    def _read(self, position: int, size: int) -> bytes:
        data = self.reader.read(position, size)
        if len(data) < size:
            raise _truncated(position)
        return data

    def walk_elements(self, position: int, limit: int, *, depth: int, until: int | None) -> int:
        """Walk elements until `limit`, or until the delimiter tag `until` (returned past it)."""
        if depth > _MAX_DEPTH:
            raise InvalidInputError("sequences are nested deeper than 32 levels")
        while position < limit:
            # Every element header, and every delimiter, is at least 8 bytes long.
            head = self._read(position, 8)
            if self.implicit_vr:
                group, number, length = self._implicit.unpack(head)
                vr = b"SQ" if length == _UNDEFINED else b"??"
                value_at = position + 8
            else:
                group, number, vr, length = self._explicit.unpack(head)
                value_at = position + 8
            tag = group << 16 | number
            if until is not None and tag == until:
                return position + 8
            if group == 0xFFFE and tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise InvalidInputError(
                    f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {position}"
                )
            if not self.implicit_vr and vr in _LONG_VRS:
                (length,) = self._long.unpack(self._read(position + 8, 4))
                value_at = position + 12
            if length != _UNDEFINED:
                if value_at + length > self.end:
                    raise InvalidInputError(
                        f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte "
                        f"{position} declares {length} bytes but only {self.end - value_at} remain"
                    )
                position = value_at + length
            else:
                # Undefined length: a sequence of items (SQ, UN holding a sequence, or
                # encapsulated pixel data whose items are opaque fragments).
                opaque = vr in (b"OB", b"OW") or tag == 0x7FE00010
                position = self._items(value_at, depth + 1, opaque=opaque)
        if until is not None:
            raise InvalidInputError("a sequence or item with undefined length is never closed")
        if position > limit:
            raise _truncated(limit)
        return position

    def _items(self, position: int, depth: int, *, opaque: bool) -> int:
        while True:
            group, number, length = self._implicit.unpack(self._read(position, 8))
            tag = group << 16 | number
            if tag == _SEQUENCE_END:
                return position + 8
            if tag != _ITEM:
                raise InvalidInputError(
                    f"expected an item tag (FFFE,E000) at byte {position}, "
                    f"found ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
            position += 8
            if length == _UNDEFINED:
                if opaque:
                    raise InvalidInputError("a pixel data fragment has undefined length")
                position = self.walk_elements(position, self.end, depth=depth, until=_ITEM_END)
            else:
                if position + length > self.end:
                    raise InvalidInputError(
                        f"truncated: an item at byte {position - 8} declares {length} bytes "
                        f"but only {self.end - position} remain"
                    )
                position += length


def _truncated(position: int) -> InvalidInputError:
    return InvalidInputError(f"truncated: the file ends inside the element at byte {position}")
