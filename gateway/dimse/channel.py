"""Whole-message exchange on an accepted association, for the services other than C-STORE.

The association loop (gateway/dimse/association.py) streams C-STORE data sets to disk and
answers C-ECHO itself. The other services we offer as an SCP (C-FIND, C-MOVE and C-GET,
storage commitment's N-ACTION) exchange small command sets and identifiers, and some send
requests of their own on the same association (C-GET's C-STORE sub-operations) and read the
peer's responses. They get a `MessageChannel`: the loop hands over the request as a `Request`
(its command set and data set decoded with pydicom) and the service answers through the
channel until it is done; then the loop reads the next request. Identifiers are small, so
they are held in memory (at most `MAX_DATA_SET` bytes); data sets the channel sends from a
file (C-STORE sub-operations) are streamed from it in fragments of the peer's PDU size.

Requests stay one at a time (the default asynchronous operations window of 1). While a
service runs, the only message the peer may send besides responses to our own requests is a
C-CANCEL-RQ for the running operation; the channel notes it and the service asks `cancelled`.
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import decode, encode

from gateway.dimse import pdu
from gateway.dimse.commands import RESPONSE_BIT
from gateway.dimse.negotiation import AcceptedContext

MAX_DATA_SET = 1 << 20  # an identifier or action information larger than this is refused
NO_DATA_SET = 0x0101
HAS_DATA_SET = 0x0001

C_STORE_RQ = 0x0001
C_GET_RQ = 0x0010
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
N_ACTION_RQ = 0x0130
C_CANCEL_RQ = 0x0FFF

MESSAGE_SERVICE_COMMANDS = frozenset({C_GET_RQ, C_FIND_RQ, C_MOVE_RQ, N_ACTION_RQ})
"""Requests the loop hands to a service as whole messages instead of serving them itself."""

_PDV_OVERHEAD = 6  # PDV item length (4), context ID (1), message control header (1)
_DEFAULT_FRAGMENT = 256 * 1024  # when the peer announced no maximum PDU length


class ChannelError(ValueError):
    """The peer broke the message exchange (an unexpected message, an oversized data set)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One received message: its command set and, if it has one, its data set."""

    context: AcceptedContext
    command: Dataset
    data_set: bytes | None

    @property
    def command_field(self) -> int:
        return int(self.command.CommandField)

    @property
    def message_id(self) -> int:
        return int(self.command.get("MessageID", self.command.get("MessageIDBeingRespondedTo", 0)))

    def identifier(self) -> Dataset:
        """The data set decoded in its context's transfer syntax (an empty one if absent)."""
        if self.data_set is None:
            return Dataset()
        return decode_data_set(self.data_set, self.context.transfer_syntax)


class MessageChannel:
    """Sends and receives whole DIMSE messages on the association's socket."""

    def __init__(
        self,
        sock: socket.socket,
        reader: pdu.PduReader,
        contexts: dict[int, AcceptedContext],
        peer_max_pdu: int,
    ) -> None:
        self._sock = sock
        self._reader = reader
        self.contexts = contexts
        self._fragment = (
            peer_max_pdu - _PDV_OVERHEAD if peer_max_pdu > _PDV_OVERHEAD else _DEFAULT_FRAGMENT
        )
        self._message_ids = itertools.count(1)
        self._cancelled: set[int] = set()

    # -- what services call -----------------------------------------------------------------

    def respond(
        self,
        request: Request,
        status: int,
        data_set: Dataset | None = None,
        **elements: object,
    ) -> None:
        """Send the response to `request` with `status`, optional identifier and elements.

        `elements` are further command elements by keyword (NumberOfCompletedSuboperations,
        ErrorComment, ...). The response names the request's SOP class and instance.
        """
        command = Dataset()
        asked = request.command
        if "AffectedSOPClassUID" in asked:
            command.AffectedSOPClassUID = asked.AffectedSOPClassUID
        elif "RequestedSOPClassUID" in asked:
            command.AffectedSOPClassUID = asked.RequestedSOPClassUID
        command.CommandField = request.command_field | RESPONSE_BIT
        command.MessageIDBeingRespondedTo = request.message_id
        command.CommandDataSetType = HAS_DATA_SET if data_set is not None else NO_DATA_SET
        command.Status = status
        if "AffectedSOPInstanceUID" in asked:
            command.AffectedSOPInstanceUID = asked.AffectedSOPInstanceUID
        elif "RequestedSOPInstanceUID" in asked:
            command.AffectedSOPInstanceUID = asked.RequestedSOPInstanceUID
        for keyword, value in elements.items():
            if keyword == "ErrorComment" and isinstance(value, str):
                value = value.replace("\\", "/")[:64]
            setattr(command, keyword, value)
        payload = (
            None if data_set is None else encode_data_set(data_set, request.context.transfer_syntax)
        )
        self.send(request.context.context_id, command, payload)

    def send(self, context_id: int, command: Dataset, data_set: bytes | BinaryIO | None) -> None:
        """Send one message; a file-like data set is streamed from its current position."""
        self._send_fragments(context_id, True, iter((encode_command(command),)))
        if data_set is None:
            return
        if isinstance(data_set, bytes | bytearray | memoryview):
            self._send_fragments(context_id, False, _slices(bytes(data_set), self._fragment))
        else:
            self._send_fragments(context_id, False, _reads(data_set, self._fragment))

    def _next_message_id(self) -> int:
        """A Message ID for a request of ours (a C-GET's C-STORE sub-operation)."""
        return next(self._message_ids) & 0xFFFF

    def send_c_store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        data_set: BinaryIO,
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> Request:
        """Send a C-STORE-RQ sub-operation (C-GET) streaming `data_set`; return the response.

        `data_set` is positioned at the data set, already in the context's transfer syntax.
        """
        command = Dataset()
        command.AffectedSOPClassUID = sop_class_uid
        command.CommandField = C_STORE_RQ
        message_id = self._next_message_id()
        command.MessageID = message_id
        command.Priority = 0
        command.CommandDataSetType = HAS_DATA_SET
        command.AffectedSOPInstanceUID = sop_instance_uid
        if move_originator is not None:
            command.MoveOriginatorApplicationEntityTitle = move_originator[0]
            command.MoveOriginatorMessageID = move_originator[1]
        self.send(context_id, command, data_set)
        response = self.receive()
        answered = int(response.command.get("MessageIDBeingRespondedTo", -1))
        if response.command_field != (C_STORE_RQ | RESPONSE_BIT) or answered != message_id:
            raise ChannelError(
                f"expected the C-STORE-RSP to message {message_id}, got command "
                f"0x{response.command_field:04X} answering {answered}"
            )
        return response

    def receive(self) -> Request:
        """The next whole message from the peer (a response to one of our requests).

        A C-CANCEL-RQ is noted (see `cancelled`) and the next message is read.
        """
        while True:
            message = self._read_message()
            if message.command_field == C_CANCEL_RQ:
                self._cancelled.add(int(message.command.get("MessageIDBeingRespondedTo", 0)))
                continue
            if not message.command_field & RESPONSE_BIT:
                raise ChannelError(
                    f"the peer sent a new request (command 0x{message.command_field:04X}) "
                    "while an operation was in progress"
                )
            return message

    def cancelled(self, message_id: int) -> bool:
        """True once the peer sent C-CANCEL-RQ for `message_id`; looks without waiting."""
        while message_id not in self._cancelled and self._readable():
            message = self._read_message()
            if message.command_field != C_CANCEL_RQ:
                raise ChannelError(
                    f"the peer sent command 0x{message.command_field:04X} while operation "
                    f"{message_id} was in progress (only C-CANCEL-RQ may interrupt it)"
                )
            self._cancelled.add(int(message.command.get("MessageIDBeingRespondedTo", 0)))
        return message_id in self._cancelled

    # -- the wire -------------------------------------------------------------------------

    def _send_fragments(self, context_id: int, is_command: bool, chunks: Iterator[bytes]) -> None:
        control = 0x01 if is_command else 0x00
        current = next(chunks, b"")
        for following in chunks:
            self._sock.sendall(_p_data(context_id, control, current))
            current = following
        self._sock.sendall(_p_data(context_id, control | 0x02, current))

    def _readable(self) -> bool:
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return True
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)

    def _read_message(self) -> Request:
        command_bytes = bytearray()
        data: bytearray | None = None
        context_id: int | None = None
        command: Dataset | None = None
        while True:
            kind, body = self._reader.read()
            if kind == pdu.A_ABORT:
                raise pdu.PeerClosed(f"the association was aborted by {pdu.abort_origin(body)}")
            if kind != pdu.P_DATA_TF:
                raise pdu.ProtocolViolation(
                    f"{pdu.PDU_NAMES.get(kind, hex(kind))} received during an operation",
                    pdu.ABORT_UNEXPECTED_PDU,
                )
            for value in pdu.iter_pdvs(body):
                if context_id is None:
                    context_id = value.context_id
                if value.context_id != context_id or context_id not in self.contexts:
                    raise pdu.ProtocolViolation(
                        f"a message fragment on presentation context {value.context_id}"
                    )
                if value.is_command:
                    if command is not None:
                        raise pdu.ProtocolViolation("a command fragment arrived inside a data set")
                    command_bytes += value.data
                    if len(command_bytes) > 65536:
                        raise pdu.ProtocolViolation("a command set longer than 64 KiB")
                    if value.is_last:
                        command = decode_command_set(bytes(command_bytes))
                        if command.get("CommandDataSetType", NO_DATA_SET) == NO_DATA_SET:
                            return Request(self.contexts[context_id], command, None)
                        data = bytearray()
                else:
                    if command is None or data is None:
                        raise pdu.ProtocolViolation(
                            "a data set fragment arrived before its command"
                        )
                    data += value.data
                    if len(data) > MAX_DATA_SET:
                        raise ChannelError(f"a data set longer than {MAX_DATA_SET} bytes")
                    if value.is_last:
                        return Request(self.contexts[context_id], command, bytes(data))


def decode_command_set(raw: bytes) -> Dataset:
    """A command set (group 0000, Implicit VR Little Endian) as a Dataset."""
    try:
        dataset = decode(BytesIO(raw), True, True)
        if "CommandField" not in dataset:
            raise ValueError("no Command Field (0000,0100)")
        int(dataset.CommandField)
    except Exception as exc:  # pydicom raises what its parsers meet
        raise ChannelError(f"an unreadable command set ({exc})") from exc
    return dataset


def encode_command(command: Dataset) -> bytes:
    """A command set with its Command Group Length first (PS3.7 §6.3.1)."""
    body = Dataset()
    for element in command:
        if element.tag != 0x00000000:
            body.add(element)
    encoded = encode(body, True, True)
    if encoded is None:
        raise ChannelError("a command set that pydicom cannot encode")
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(encoded)) + encoded


def encode_data_set(data_set: Dataset, transfer_syntax: str) -> bytes:
    """An identifier or event information in the presentation context's transfer syntax."""
    encoded = encode(data_set, *_encoding(transfer_syntax))
    if encoded is None:
        raise ChannelError("an identifier that pydicom cannot encode (see the log)")
    return encoded


def decode_data_set(raw: bytes, transfer_syntax: str) -> Dataset:
    """A received identifier, decoded; raises ChannelError if it cannot be read."""
    try:
        return decode(BytesIO(raw), *_encoding(transfer_syntax))
    except Exception as exc:  # pydicom raises what its parsers meet
        raise ChannelError(f"an unreadable identifier ({exc})") from exc


def _encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a non-compressed transfer syntax."""
    return (
        transfer_syntax == ImplicitVRLittleEndian,
        transfer_syntax != ExplicitVRBigEndian,
        transfer_syntax == DeflatedExplicitVRLittleEndian,
    )


def _p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BxL", pdu.P_DATA_TF, len(item)) + item


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    if not data:
        yield b""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _reads(stream: BinaryIO, size: int) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk
