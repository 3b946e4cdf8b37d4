"""One inbound association, start to end: negotiate, then serve C-ECHO and C-STORE until release.

Why not pynetdicom's acceptor: it moves every PDU through a DUL thread, a state machine, an
event queue and an association thread that poll each other every millisecond, and assembles
each message in memory or a temporary file before our handler sees it. That cost about 4 ms of
Python per C-STORE, several times what Orthanc spends in total (issue 7, docs/benchmarks.md).
This loop runs in the connection's own thread and blocks on the socket: it reads a PDU, writes
data set fragments straight from the receive buffer into a staging file that already has its
Part 10 header, and when the last fragment is in hands the file to ingest and answers.
Verification and Storage are served here; the message services (C-FIND, C-MOVE, C-GET,
storage commitment) get the whole request and answer through a `MessageChannel`
(gateway/dimse/channel.py). pynetdicom still decodes and encodes the association PDUs and
negotiates the presentation contexts (negotiation.py).

The PDU exchange follows PS3.8 §9: A-ASSOCIATE-RQ first (within `acse_timeout`), then
P-DATA-TF until A-RELEASE-RQ (answered with A-RELEASE-RP) or A-ABORT. Anything else, a PDU
longer than we announced, or silence longer than `network_timeout` aborts the association.
Operations are not asynchronous (the default window of 1): a request is answered before the
next one is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.dicom.file_meta import file_meta
from gateway.dicom.uids import is_valid_uid
from gateway.dimse import pdu
from gateway.dimse.channel import (
    MAX_DATA_SET,
    MESSAGE_SERVICE_COMMANDS,
    ChannelError,
    MessageChannel,
    Request,
    decode_command_set,
)
from gateway.dimse.commands import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_UNRECOGNISED_OPERATION,
    Command,
    CommandError,
    decode_command,
    encode_response,
)
from gateway.dimse.negotiation import (
    APPLICATION_CONTEXT,
    REJECT_APPLICATION_CONTEXT,
    REJECT_BUSY,
    AcceptedContext,
    AssociationRequest,
    decode_request,
    is_storage,
    negotiate,
    reject,
    reject_reason,
)

log = logging.getLogger(__name__)

PDU_LIMIT_FLOOR = 1 << 20  # association requests with many contexts stay well below this


@dataclass(slots=True, eq=False)
class Association:
    """Who is at the other end and what was agreed; one per accepted association."""

    calling_ae: str
    called_ae: str
    peer: str
    sock: socket.socket = field(repr=False)
    contexts: dict[int, AcceptedContext] = field(default_factory=dict)
    peer_max_pdu: int = 0  # the longest PDU the peer accepts from us; 0: no limit

    @property
    def tls(self) -> ssl.SSLSocket | None:
        return self.sock if isinstance(self.sock, ssl.SSLSocket) else None


class AssociationServices(Protocol):
    """What the association loop asks of the gateway (gateway/dimse/handlers.py)."""

    def admit(self, request: AssociationRequest, peer: str) -> tuple[int, int, int] | None:
        """None to accept, else the (result, source, diagnostic) of the rejection."""

    def accepted(self, association: Association) -> None: ...

    def ended(self, association: Association, how: str) -> None:
        """`how`: released, aborted (by the peer or by us) or closed (connection lost)."""

    def rejected(self, request: AssociationRequest, peer: str, reason: str) -> None: ...

    def echo(self, association: Association, command: Command) -> int: ...

    def store(
        self, association: Association, command: Command, path: Path
    ) -> tuple[int, str | None]:
        """Ingest the Part 10 file at `path` (consumed on success); the status to answer."""

    @property
    def message_sop_classes(self) -> frozenset[str]:
        """SOP classes of the message services (query/retrieve, commitment) offered."""

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> bool:
        """Serve a C-FIND, C-MOVE, C-GET or N-ACTION request, answering on `channel`.

        False if no service takes this request (the loop answers "unrecognised operation").
        """


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Timeouts and sizes of the association loop (from DimseSettings)."""

    max_pdu: int  # announced to peers: the longest P-DATA-TF PDU we accept
    acse_timeout: float  # for the A-ASSOCIATE-RQ
    network_timeout: float  # silence (or a stall inside a PDU) that ends an association


class _Message:
    """The request being received: its command fragments, then its data set's staging file."""

    __slots__ = ("buffer", "command", "command_bytes", "context", "file", "path", "refusal")

    def __init__(self, context: AcceptedContext) -> None:
        self.context = context
        self.command_bytes = bytearray()
        self.command: Command | None = None
        self.file: int | None = None  # fd of the staging file, while the data set arrives
        self.path: Path | None = None
        self.refusal: tuple[int, str] | None = None  # answer this after draining the data set
        self.buffer: bytearray | None = None  # a message service's data set, held in memory


class AssociationLoop:
    """Serves one connection; `run` returns when it is over (the socket is then closed)."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        services: AssociationServices,
        limits: Limits,
        staging_dir: Path,
        *,
        busy: bool = False,
    ) -> None:
        self._sock = sock
        self._busy = busy  # over dimse.max_associations: reject once the request is read
        self._peer = peer
        self._services = services
        self._limits = limits
        self._staging_dir = staging_dir
        self._reader = pdu.PduReader(sock, max(limits.max_pdu, PDU_LIMIT_FLOOR) + 1024)
        self._association: Association | None = None
        self._message: _Message | None = None
        self._spare: tuple[int, Path] | None = None  # the next C-STORE's staging file

    def run(self) -> None:
        how = "closed"
        try:
            self._sock.settimeout(self._limits.acse_timeout)
            if not self._associate():
                return
            self._sock.settimeout(self._limits.network_timeout)
            how = self._serve()
        except pdu.ProtocolViolation as exc:
            self._drop(str(exc), exc.abort_reason)
            how = "aborted"
        except CommandError as exc:
            self._drop(f"an unreadable command set ({exc})", pdu.ABORT_INVALID_PARAMETER)
            how = "aborted"
        except TimeoutError as exc:
            waited = (
                self._limits.network_timeout if self._association else self._limits.acse_timeout
            )
            what = str(exc) or "nothing received"
            self._drop(f"{what} for {waited:g} s", pdu.ABORT_NOT_SPECIFIED)
            how = "aborted"
        except pdu.PeerClosed as exc:
            if self._association is not None or "entire PDU" in str(exc):
                log.warning("DIMSE connection from %s ended: %s", self._who(), exc)
        except OSError as exc:
            log.warning("DIMSE connection from %s failed: %s", self._who(), exc)
        finally:
            self._discard_message()
            if self._spare is not None:
                fd, path = self._spare
                self._spare = None
                with contextlib.suppress(OSError):
                    os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
            if self._association is not None:
                self._services.ended(self._association, how)
            with contextlib.suppress(OSError):
                self._sock.close()

    # -- association set-up and tear-down ------------------------------------------------

    def _associate(self) -> bool:
        kind, body = self._reader.read()
        if kind != pdu.A_ASSOCIATE_RQ:
            raise pdu.ProtocolViolation(
                f"{_pdu_name(kind)} received before an A-ASSOCIATE-RQ",
                pdu.ABORT_UNEXPECTED_PDU if kind in pdu.PDU_NAMES else pdu.ABORT_UNRECOGNISED_PDU,
            )
        request = decode_request(body)
        verdict = REJECT_BUSY if self._busy else self._services.admit(request, self._peer)
        if verdict is None and request.application_context != APPLICATION_CONTEXT:
            verdict = REJECT_APPLICATION_CONTEXT
        if verdict is not None:
            result, source, diagnostic = verdict
            self._sock.sendall(reject(result, source, diagnostic))
            self._services.rejected(request, self._peer, reject_reason(source, diagnostic))
            return False
        accept, contexts = negotiate(
            request, self._limits.max_pdu, self._services.message_sop_classes
        )
        self._sock.sendall(accept)
        self._association = Association(
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            peer=self._peer,
            sock=self._sock,
            contexts={cx.context_id: cx for cx in contexts},
            peer_max_pdu=request.max_pdu,
        )
        self._services.accepted(self._association)
        return True

    def _serve(self) -> str:
        while True:
            kind, body = self._reader.read()
            if kind == pdu.P_DATA_TF:
                for value in pdu.iter_pdvs(body):
                    self._on_pdv(value)
            elif kind == pdu.A_RELEASE_RQ:
                if self._message is not None:
                    log.warning(
                        "%s released the association in the middle of a message; it is dropped",
                        self._who(),
                    )
                self._sock.sendall(pdu.RELEASE_RP)
                return "released"
            elif kind == pdu.A_ABORT:
                log.info("association from %s aborted by %s", self._who(), pdu.abort_origin(body))
                return "aborted"
            else:
                raise pdu.ProtocolViolation(
                    f"{_pdu_name(kind)} received during the association",
                    pdu.ABORT_UNEXPECTED_PDU
                    if kind in pdu.PDU_NAMES
                    else pdu.ABORT_UNRECOGNISED_PDU,
                )

    def _drop(self, reason: str, abort_reason: int) -> None:
        log.warning("dropped DIMSE connection from %s: %s", self._who(), reason)
        with contextlib.suppress(OSError):
            self._sock.sendall(pdu.a_abort(abort_reason))

    def _who(self) -> str:
        if self._association is not None:
            return f"{self._association.calling_ae}@{self._peer}"
        return self._peer

    # -- messages ------------------------------------------------------------------------

    def _on_pdv(self, value: pdu.Pdv) -> None:
        association = self._association
        assert association is not None
        context = association.contexts.get(value.context_id)
        if context is None:
            raise pdu.ProtocolViolation(
                f"a PDV on presentation context {value.context_id}, which was not accepted"
            )
        message = self._message
        if message is None:
            if not value.is_command:
                raise pdu.ProtocolViolation("a data set fragment arrived before its command")
            message = self._message = _Message(context)
        elif message.context.context_id != value.context_id:
            raise pdu.ProtocolViolation("one message's fragments arrived on two contexts")
        if value.is_command:
            if message.command is not None:
                raise pdu.ProtocolViolation("a command fragment arrived inside a data set")
            message.command_bytes += value.data
            if len(message.command_bytes) > 65536:
                raise pdu.ProtocolViolation("a command set longer than 64 KiB")
            if value.is_last:
                message.command = decode_command(message.command_bytes)
                self._on_command(message)
        else:
            if message.command is None:
                raise pdu.ProtocolViolation("a data set fragment arrived inside a command")
            if message.file is not None:
                _write_all(message.file, value.data)
            elif message.buffer is not None:
                message.buffer += value.data
                if len(message.buffer) > MAX_DATA_SET:
                    raise pdu.ProtocolViolation(
                        f"the data set of a {message.command.name} is longer than "
                        f"{MAX_DATA_SET} bytes"
                    )
            if value.is_last:
                self._on_data_set(message)

    def _on_command(self, message: _Message) -> None:
        command = message.command
        association = self._association
        assert command is not None and association is not None
        if command.command_field == C_STORE_RQ:
            message.refusal = self._check_store(message.context, command)
            if not command.has_data_set:
                self._answer(message, *(message.refusal or (STATUS_CANNOT_UNDERSTAND, "")))
            elif message.refusal is None:
                self._open_staging_file(message, command)
            return
        if command.command_field in MESSAGE_SERVICE_COMMANDS:
            if command.has_data_set:
                message.buffer = bytearray()
            else:
                self._serve_message(message)
            return
        if command.has_data_set:  # not ours to read: drain it, then answer
            message.refusal = (
                STATUS_UNRECOGNISED_OPERATION,
                f"{command.name} is not served on this listener",
            )
            return
        if command.command_field == C_ECHO_RQ:
            self._answer(message, self._services.echo(association, command), None)
        elif command.command_field == C_CANCEL_RQ:
            self._message = None  # nothing of ours runs long enough to cancel
        else:
            self._answer(
                message,
                STATUS_UNRECOGNISED_OPERATION,
                f"{command.name} is not served on this listener",
            )

    def _check_store(self, context: AcceptedContext, command: Command) -> tuple[int, str] | None:
        if (
            command.affected_sop_class_uid != context.abstract_syntax
            or not is_storage(context.abstract_syntax)
            or not context.as_scp
        ):
            return (
                STATUS_SOP_CLASS_NOT_SUPPORTED,
                "the SOP class does not match the presentation context",
            )
        if not is_valid_uid(command.affected_sop_instance_uid):
            return (
                STATUS_CANNOT_UNDERSTAND,
                "Affected SOP Instance UID of the command is not a valid UID",
            )
        return None

    def _open_staging_file(self, message: _Message, command: Command) -> None:
        if self._spare is not None:
            fd, path = self._spare
            self._spare = None
        else:
            fd, path = self._create_staging_file()
        message.file, message.path = fd, path
        try:
            _write_all(
                fd,
                memoryview(
                    file_meta(
                        command.affected_sop_class_uid,
                        command.affected_sop_instance_uid,
                        message.context.transfer_syntax,
                    )
                ),
            )
        except OSError:
            self._discard_message()
            raise

    def _on_data_set(self, message: _Message) -> None:
        association = self._association
        command = message.command
        assert association is not None and command is not None
        if message.refusal is not None:
            self._answer(message, *message.refusal)
            return
        if message.buffer is not None:
            self._serve_message(message)
            return
        assert message.file is not None and message.path is not None
        os.close(message.file)
        message.file = None
        try:
            status, comment = self._services.store(association, command, message.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                message.path.unlink()  # ingest consumed it on success; a refusal leaves it
            message.path = None
        self._answer(message, status, comment)

    def _serve_message(self, message: _Message) -> None:
        """Hand a whole request to its message service; it answers on the channel."""
        association = self._association
        command = message.command
        assert association is not None and command is not None
        self._message = None
        data = None if message.buffer is None else bytes(message.buffer)
        request = Request(message.context, decode_command_set(bytes(message.command_bytes)), data)
        channel = MessageChannel(
            self._sock, self._reader, association.contexts, association.peer_max_pdu
        )
        try:
            served = self._services.serve(association, channel, request)
        except ChannelError as exc:
            raise pdu.ProtocolViolation(str(exc)) from exc
        if not served:
            self._sock.sendall(
                pdu.p_data_tf(
                    message.context.context_id,
                    encode_response(
                        command,
                        STATUS_UNRECOGNISED_OPERATION,
                        f"{command.name} is not served on this listener",
                    ),
                )
            )

    def _answer(self, message: _Message, status: int, comment: str | None) -> None:
        command = message.command
        assert command is not None
        self._message = None
        self._discard(message)
        self._sock.sendall(
            pdu.p_data_tf(message.context.context_id, encode_response(command, status, comment))
        )
        if command.command_field == C_STORE_RQ and self._spare is None:
            # While the peer reads this answer and sends its next request, create the next
            # staging file: creating a file cost ~0.1 ms of the time between two C-STOREs
            # (bench.profile), and that wait is now spent where we would idle anyway.
            try:
                self._spare = self._create_staging_file()
            except OSError as exc:
                log.warning("cannot prepare a staging file in %s: %s", self._staging_dir, exc)

    def _create_staging_file(self) -> tuple[int, Path]:
        path = self._staging_dir / f"dimse-{uuid.uuid4().hex}.dcm"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def _discard_message(self) -> None:
        if self._message is not None:
            self._discard(self._message)
            self._message = None

    @staticmethod
    def _discard(message: _Message) -> None:
        if message.file is not None:
            with contextlib.suppress(OSError):
                os.close(message.file)
            message.file = None
        if message.path is not None:
            with contextlib.suppress(OSError):
                message.path.unlink()
            message.path = None


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _pdu_name(kind: int) -> str:
    return pdu.PDU_NAMES.get(kind, f"unknown PDU type 0x{kind:02X}")
