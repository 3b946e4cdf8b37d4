"""A seekable, read-only file over `open_range`: random access to a spool object by ranged reads.

Why: pydicom and the frame locator (gateway/dicom/pixels.py) need `seek` and `read`, but an
S3 object is a stream; downloading a 2 GB multi-frame to answer `/frames/1` cost 2 GB of
transfer. This reader fetches only the bytes read, one ranged GET per miss, plus a read-ahead
window kept in memory (the only buffer, so memory stays bounded by the window and the largest
single read).

The read-ahead adapts: reading on past the end of the window doubles it (a header parsed
element by element costs a few requests); jumping elsewhere after using little of it shrinks
it to what was used (walking fragment item headers by seeking costs about 500 bytes a jump,
not a window).
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, Protocol, cast

from gateway.exceptions import PastEndError

_MIN_AHEAD = 512
_FIRST_AHEAD = 64 * 1024
_MAX_AHEAD = 1024 * 1024


class RangeSource(Protocol):
    """What the reader needs from a spool: bytes `start` to `end - 1` of an object."""

    def open_range(self, key: str, start: int, end: int) -> BinaryIO: ...


class RangedReader(io.RawIOBase):
    """Object `key` of `source` (`size` bytes) as a seekable binary file."""

    def __init__(self, source: RangeSource, key: str, size: int) -> None:
        super().__init__()
        self._source = source
        self._key = key
        self._size = size
        self._position = 0
        self._window = b""
        self._window_start = 0
        self._used = 0  # how far into the window reads have reached
        self._ahead = _FIRST_AHEAD
        self.fetched = 0  # bytes received from the source, for logs and tests
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._position + offset
        elif whence == os.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError(f"cannot seek to byte {target} of {self._key}")
        self._position = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"read of {self._key} after it was closed")
        if size is None or size < 0:
            size = self._size - self._position
        data = self._read_at(self._position, size)
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _read_at(self, position: int, size: int) -> bytes:
        size = max(0, min(size, self._size - position))
        if size == 0:
            return b""
        offset = position - self._window_start
        if self._window and 0 <= offset <= len(self._window):  # in the window, or just after
            head = self._window[offset : offset + size]
            self._used = max(self._used, offset + len(head))
            if len(head) == size:
                return head
            self._ahead = min(self._ahead * 2, _MAX_AHEAD)  # reading on: fetch more at a time
        else:
            if self._used < len(self._window) // 2:
                self._ahead = max(self._used, _MIN_AHEAD)  # jumping about: fetch what was used
            head = b""
        start = position + len(head)
        wanted = size - len(head)
        # A large read (a frame) is fetched as asked; read-ahead is for small, parsing reads.
        end = min(start + wanted + (0 if wanted >= self._ahead else self._ahead), self._size)
        self._window = self._fetch(start, end)
        self._window_start = start
        self._used = min(wanted, len(self._window))
        return head + self._window[:wanted]

    def _fetch(self, start: int, end: int) -> bytes:
        self.requests += 1
        try:
            body = self._source.open_range(self._key, start, end)
        except PastEndError:
            body = io.BytesIO()  # the object is shorter than `size`: its end is here
        with body:
            chunks = []
            wanted = end - start
            while wanted > 0 and (chunk := body.read(wanted)):
                chunks.append(chunk)
                wanted -= len(chunk)
        data = b"".join(chunks)
        self.fetched += len(data)
        if len(data) < end - start:
            self._size = start + len(data)  # a short object reads as EOF, like a short file
        return data

    def close(self) -> None:
        self._window = b""
        super().close()


def open_ranged(source: RangeSource, key: str, size: int) -> BinaryIO:
    """A seekable file over `source.open_range` (typed as the BinaryIO pydicom accepts)."""
    return cast(BinaryIO, RangedReader(source, key, size))
