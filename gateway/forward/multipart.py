"""Streaming ``multipart/related; type="application/dicom"`` request bodies for STOW-RS.

A body is an iterable of byte chunks read ~1 MiB at a time from each instance's own stream, so
memory does not grow with object size. Its length is known before the first byte is sent
(part headers are fixed, instance sizes come from the database), which lets the request carry a
``Content-Length`` instead of chunked encoding: some DICOMweb servers do not accept the latter.

Because the length is announced up front, the body checks that every instance yields exactly
the bytes promised; when it cannot (the spool failed, or holds a different size) it raises
:class:`PartSourceError` naming the delivery, and the caller settles that delivery on its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator, Sequence
from typing import BinaryIO

from gateway.exceptions import SpoolError
from gateway.forward.base import OutgoingInstance

__all__ = ["CHUNK_SIZE", "DicomMultipartBody", "PartSourceError", "part_overhead"]

CHUNK_SIZE = 1 << 20
"""Bytes read from an instance stream at a time."""

_PART_HEADERS = b"Content-Type: application/dicom\r\n\r\n"


class PartSourceError(SpoolError):
    """The bytes of one part could not be produced as announced.

    ``permanent`` is true when retrying cannot help (the stored object has a different size
    than the database records); false when the spool failed to read it (it may recover).
    """

    def __init__(self, message: str, *, delivery_id: int, permanent: bool) -> None:
        super().__init__(message)
        self.delivery_id = delivery_id
        self.permanent = permanent


def part_overhead(boundary: str) -> int:
    """Bytes a part adds around its payload: delimiter line, headers, trailing CRLF."""
    return len(_delimiter(boundary)) + len(_PART_HEADERS) + 2


def _delimiter(boundary: str) -> bytes:
    return b"--" + boundary.encode("ascii") + b"\r\n"


class DicomMultipartBody:
    """One STOW-RS request body over ``instances``; re-iterable (each pass re-opens the files).

    Call :meth:`close` when the request is over: a pass abandoned half-way (the connection
    failed) still holds an open instance stream until then.
    """

    def __init__(self, instances: Sequence[OutgoingInstance], *, boundary: str | None = None):
        self.instances = tuple(instances)
        self.boundary = boundary or secrets.token_hex(16)
        self._passes: list[Generator[bytes, None, None]] = []

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    @property
    def content_length(self) -> int:
        closing = len(self.boundary) + 6  # "--" boundary "--" CRLF
        per_part = part_overhead(self.boundary)
        return sum(per_part + inst.size for inst in self.instances) + closing

    def __iter__(self) -> Iterator[bytes]:
        stream = self._generate()
        self._passes.append(stream)
        return stream

    def close(self) -> None:
        """Close every pass; an instance stream left open by an abandoned pass is closed."""
        for stream in self._passes:
            stream.close()
        self._passes.clear()

    def _generate(self) -> Generator[bytes, None, None]:
        # Each chunk is one write through httpx, h11 and the socket: the CRLF that ends a part
        # travels with the next part's delimiter and headers, or with the closing delimiter.
        opening = _delimiter(self.boundary) + _PART_HEADERS
        between = b"\r\n" + opening
        closing = b"--" + self.boundary.encode("ascii") + b"--\r\n"
        for index, inst in enumerate(self.instances):
            yield between if index else opening
            yield from _read_exactly(inst)
        yield b"\r\n" + closing if self.instances else closing


def _read_exactly(inst: OutgoingInstance) -> Generator[bytes, None, None]:
    """Yield the instance's bytes; raise PartSourceError unless there are exactly ``size``."""
    try:
        stream: BinaryIO = inst.open()
    except (OSError, SpoolError) as exc:
        raise PartSourceError(
            f"cannot open stored instance {inst.sop_instance_uid}: {exc}",
            delivery_id=inst.delivery_id,
            permanent=False,
        ) from exc
    remaining = inst.size
    try:
        # Ask for no more than is left, so a small instance is one exact-size read.
        while remaining > 0:
            chunk = _read(stream, min(CHUNK_SIZE, remaining), inst)
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
        longer = remaining == 0 and bool(_read(stream, 1, inst))
    finally:
        stream.close()
    if remaining or longer:
        found = f"more than {inst.size}" if longer else str(inst.size - remaining)
        raise PartSourceError(
            f"stored instance {inst.sop_instance_uid} holds {found} bytes but the database "
            f"records {inst.size}; the spool and the database disagree",
            delivery_id=inst.delivery_id,
            permanent=True,
        )


def _read(stream: BinaryIO, size: int, inst: OutgoingInstance) -> bytes:
    try:
        return stream.read(size)
    except (OSError, SpoolError) as exc:
        raise PartSourceError(
            f"reading stored instance {inst.sop_instance_uid} failed: {exc}",
            delivery_id=inst.delivery_id,
            permanent=False,
        ) from exc
