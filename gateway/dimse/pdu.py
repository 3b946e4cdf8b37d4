"""Reading and writing Upper Layer PDUs (PS3.8 §9.3) on a blocking socket, with limits.

Only framing lives here: a PDU is a 6-byte header (type, reserved, 32-bit length) and a body.
The bodies of association PDUs are decoded and encoded with pynetdicom's PDU classes
(gateway/dimse/negotiation.py); P-DATA-TF bodies are split into PDVs by `iter_pdvs` without
copying, so a data set fragment goes from the receive buffer to the spool file as it is.

Every read has a deadline (the socket's timeout) and every announced length a limit, so a peer
that sends half a PDU or announces 4 GiB is dropped instead of holding a thread or memory.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# A-ABORT reasons when we are the service provider (source 0x02), PS3.8 §9.3.8.
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNISED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
RELEASE_RP = _HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


class PeerClosed(ConnectionError):
    """The peer closed the connection (cleanly or mid-PDU)."""


class ProtocolViolation(ValueError):
    """What the peer sent is not valid Upper Layer protocol; the association is aborted."""

    def __init__(self, reason: str, abort_reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(reason)
        self.abort_reason = abort_reason


@dataclass(frozen=True, slots=True)
class Pdv:
    """One presentation data value: a fragment of a command or a data set."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


class PduReader:
    """Reads whole PDUs into one reused buffer, refusing any longer than `limit` bytes."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self._sock = sock
        self.limit = limit
        self._buffer = bytearray(64 * 1024)
        self._header = bytearray(_HEADER.size)

    def read(self) -> tuple[int, memoryview]:
        """The next PDU's type and body; the body is valid until the next call.

        Raises PeerClosed at end of stream, TimeoutError when the socket's deadline passes and
        ProtocolViolation for a PDU longer than the limit (before reading its body).
        """
        self._fill(memoryview(self._header), at_boundary=True)
        kind, length = _HEADER.unpack(self._header)
        if length > self.limit:
            raise ProtocolViolation(
                f"it announced a {length}-byte PDU (limit {self.limit})", ABORT_INVALID_PARAMETER
            )
        if length > len(self._buffer):
            self._buffer = bytearray(length)
        body = memoryview(self._buffer)[:length]
        self._fill(body, at_boundary=False)
        return kind, body

    def _fill(self, view: memoryview, *, at_boundary: bool) -> None:
        received = 0
        while received < len(view):
            try:
                count = self._sock.recv_into(view[received:])
            except TimeoutError:
                if at_boundary and received == 0:
                    raise
                raise TimeoutError("the peer stalled in the middle of a PDU") from None
            if count == 0:
                if at_boundary and received == 0:
                    raise PeerClosed("the peer closed the connection")
                raise PeerClosed("connection closed before the entire PDU was received")
            received += count


def iter_pdvs(body: memoryview) -> Iterator[Pdv]:
    """The PDVs of a P-DATA-TF body, as views into it."""
    offset = 0
    end = len(body)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise ProtocolViolation("a P-DATA-TF item is shorter than its header")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolViolation(f"a PDV announces {length} bytes that are not in the PDU")
        data = body[offset + _PDV_HEADER.size : offset + 4 + length]
        yield Pdv(context_id, bool(control & 0x01), bool(control & 0x02), data)
        offset += 4 + length


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying a whole (small) command set as its last fragment."""
    item = _PDV_HEADER.pack(len(command) + 2, context_id, 0x03) + command
    return _HEADER.pack(P_DATA_TF, len(item)) + item


def a_abort(reason: int = ABORT_NOT_SPECIFIED) -> bytes:
    """An A-ABORT from the service provider (source 2) with `reason`."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, 2, reason))


def abort_origin(body: memoryview) -> str:
    """Who aborted, from an A-ABORT body, for the log."""
    if len(body) < 4:
        return "the peer"
    source, reason = body[2], body[3]
    return f"the peer (source {source}, reason {reason})"
