"""Where each frame of encapsulated Pixel Data lies, found from offset tables and item headers.

Why not pydicom's `get_frame`: without an offset table it reads every fragment before the one
asked for (to count them, or to find JPEG end-of-image markers), which on the S3 spool means
fetching most of a 2 GB object for its last frame. Here only tables and item headers are read:
the Extended Offset Table (one fragment per frame) or the Basic Offset Table give a frame's
first item directly; without either, item headers are walked by seeking from one to the next,
reading a few bytes of each, and remembered for the rest of the request. A frame then costs
its own fragments.

Frame boundaries without an offset table: one frame owns every fragment; JPEG, JPEG-LS and
JPEG 2000 frames start with their codestream's start marker; otherwise there must be one
fragment per frame (RLE always has). Anything else answers None and the caller falls back to
pydicom, which still reads only up to the frame, never the whole object at once.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from gateway.exceptions import GatewayError

_ITEM = 0xFFFEE000
_SEQUENCE_END = 0xFFFEE0DD
_HEADER = struct.Struct("<HHI")  # encapsulated transfer syntaxes are all little endian
_PROBE = 8  # bytes of each fragment read to tell whether a frame starts there

_UNDEFINED = 0xFFFFFFFF
_JPEG_START = (b"\xff\xd8\xff",)  # SOI and the next marker (JPEG and JPEG-LS)
_J2K_START = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")  # SOC+SIZ, or a JP2 file
_FRAME_STARTS = {
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4." + n for n in ("50", "51", "57", "70", "80", "81")), _JPEG_START
    ),
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4." + n for n in ("90", "91", "92", "93", "201", "202", "203")),
        _J2K_START,
    ),
}


class FragmentError(GatewayError):
    """The encapsulated pixel data is malformed or cut short."""


@dataclass(frozen=True, slots=True)
class Fragment:
    offset: int  # first byte of the fragment's data in the object
    length: int


class FrameIndex:
    """The fragments of each frame of one object's encapsulated Pixel Data, found on demand."""

    def __init__(
        self,
        fp: BinaryIO,
        *,
        value_offset: int,
        frames: int,
        transfer_syntax: str,
        extended_offsets: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._fp = fp
        self._frames = frames
        self._markers = _FRAME_STARTS.get(transfer_syntax)
        tag, length = self._item_header(value_offset)
        if tag != _ITEM:
            raise FragmentError("the encapsulated pixel data does not start with an item")
        if length % 4 or length > 4 * frames:
            raise FragmentError(f"the basic offset table has {length} bytes for {frames} frames")
        self._first_item = value_offset + 8 + length
        self._extended = _extended_table(extended_offsets, frames)
        self._basic = _basic_table(self._read(value_offset + 8, length), frames)
        self._walked: list[Fragment] = []  # every fragment read so far, in order
        self._starts: list[int] = []  # indexes in _walked where a marked frame starts
        self._next: int | None = self._first_item  # next item header to read; None: at the end

    def frame(self, number: int) -> list[Fragment] | None:
        """The fragments of frame `number` (1-based), or None if frames cannot be told apart."""
        index = number - 1
        if self._extended is not None:
            offset, length = self._extended[index]
            return [Fragment(self._first_item + offset + 8, length)]
        if self._basic is not None:
            start = self._first_item + self._basic[index]
            end = self._first_item + self._basic[index + 1] if number < self._frames else None
            return self._fragments_between(start, end)
        if self._frames == 1:
            self._walk(lambda: False)
            return list(self._walked)
        if self._markers is not None:
            self._walk(lambda: len(self._starts) > number)
            if not self._starts or self._starts[0] != 0:
                return None  # the first fragment starts no frame: not ours to guess
            if self._next is None and len(self._starts) != self._frames:
                return None  # markers do not match the frame count
            first = self._starts[index]
            last = self._starts[number] if number < len(self._starts) else len(self._walked)
            return self._walked[first:last]
        self._walk(lambda: False)
        if len(self._walked) != self._frames:
            return None
        return [self._walked[index]]

    def _fragments_between(self, start: int, end: int | None) -> list[Fragment]:
        """Items from `start` up to `end` (the next frame's first item) or the sequence end."""
        fragments: list[Fragment] = []
        position = start
        while end is None or position < end:
            tag, length = self._item_header(position)
            if tag == _SEQUENCE_END and end is None:
                break
            if tag != _ITEM or length == _UNDEFINED:
                raise FragmentError(f"expected a pixel data item at byte {position}")
            fragments.append(Fragment(position + 8, length))
            position += 8 + length
        if end is not None and position != end:
            raise FragmentError("the basic offset table does not match the fragments")
        if not fragments:
            raise FragmentError("a frame of the encapsulated pixel data has no fragments")
        return fragments

    def _walk(self, done: Callable[[], bool]) -> None:
        """Read item headers (and a probe of each fragment) until `done()` or the end."""
        while self._next is not None and not done():
            position = self._next
            head = self._read(position, 8 + (_PROBE if self._markers else 0), exact=False)
            if len(head) < 8:
                raise FragmentError(f"the object ends inside the pixel data item at {position}")
            group, element, length = _HEADER.unpack_from(head)
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                self._next = None
                break
            if tag != _ITEM or length == _UNDEFINED:
                raise FragmentError(f"expected a pixel data item at byte {position}")
            if self._markers and head[8:].startswith(self._markers):
                self._starts.append(len(self._walked))
            self._walked.append(Fragment(position + 8, length))
            self._next = position + 8 + length

    def _item_header(self, position: int) -> tuple[int, int]:
        group, element, length = _HEADER.unpack(self._read(position, 8))
        return group << 16 | element, int(length)

    def _read(self, position: int, size: int, *, exact: bool = True) -> bytes:
        self._fp.seek(position)
        data = self._fp.read(size)
        if exact and len(data) != size:
            raise FragmentError(f"the object ends inside the pixel data at byte {position}")
        return data


def read_fragments(fp: BinaryIO, fragments: list[Fragment]) -> bytes:
    """The bytes of `fragments` joined: one frame, read fragment by fragment."""
    pieces = []
    for fragment in fragments:
        fp.seek(fragment.offset)
        data = fp.read(fragment.length)
        if len(data) != fragment.length:
            raise FragmentError(f"the object ends inside the fragment at {fragment.offset}")
        pieces.append(data)
    return b"".join(pieces)


def _basic_table(raw: bytes, frames: int) -> list[int] | None:
    """The Basic Offset Table, if it has one offset per frame starting at 0 and increasing."""
    if not raw:
        return None
    offsets = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    if len(offsets) != frames or offsets[0] != 0:
        return None
    if any(later <= earlier for earlier, later in itertools.pairwise(offsets)):
        return None
    return offsets


def _extended_table(
    tables: tuple[bytes, bytes] | None, frames: int
) -> list[tuple[int, int]] | None:
    """(offset, length) per frame from the Extended Offset Table and its lengths."""
    if tables is None:
        return None
    offsets, lengths = tables
    if len(offsets) != 8 * frames or len(lengths) != 8 * frames:
        return None
    return list(
        zip(
            struct.unpack(f"<{frames}Q", offsets),
            struct.unpack(f"<{frames}Q", lengths),
            strict=True,
        )
    )
