"""C-STORE sender: stores batches of instances on a DICOM peer (PS3.4 Annex B, PS3.7 9.1.1).

One association per batch (or per 128 presentation contexts). For every distinct (SOP class,
transfer syntax) of the batch it proposes a context with exactly that transfer syntax: the
stored bytes go on the wire untouched (pynetdicom's chunked dataset send, reading the file from
just after its meta group), so nothing is ever transcoded and only an exact match is usable.

How an answer settles each instance
-----------------------------------
============================================  ==========  =====================================
C-STORE response status                        Outcome     why
============================================  ==========  =====================================
0x0000 success                                 DELIVERED
0x0001, 0xB000, 0xB006, 0xB007, other 0xBxxx   DELIVERED   stored with a warning (warning=True)
0x0111 duplicate SOP instance                  DELIVERED   already there; warning=True, counted
0xA700-0xA7FF out of resources                 TRANSIENT   disk or memory frees up
0x0110 processing failure, 0x0210 duplicate    TRANSIENT   a passing error on the peer's side
invocation, 0xFE00 cancel
0xA900-0xA9FF data set does not match SOP      PERMANENT   the object is wrong for its class
class
0xC000-0xCFFF cannot understand                PERMANENT   the peer cannot parse it; resending
                                                           the same bytes gives the same answer
other 0x01xx, 0x02xx (SOP class not            PERMANENT   PS3.7 Annex C refusals
supported, not authorized, invalid instance…)
anything else                                  TRANSIENT   unknown: let the attempt limit decide
============================================  ==========  =====================================

=============================================  ==========  ====================================
Negotiation and connection                      Outcome     status
=============================================  ==========  ====================================
context for its SOP class/transfer syntax      PERMANENT   ``context rejected``: the peer said
rejected as "abstract syntax / transfer                    its configuration, not time, must
syntax not supported" (also when every context             change; dead-lettered, an operator
is, and the association therefore ends)                    sees it and can retry it
context rejected by user / provider, no reason TRANSIENT   ``context rejected``
connection refused / unreachable               TRANSIENT   ``connect failed``
association rejected (any reason)              TRANSIENT   ``association rejected``
aborted, closed, no A-ASSOCIATE answer         TRANSIENT   ``association aborted``
no C-STORE response within dimse_timeout       TRANSIENT   ``no response`` (association aborted)
response for another request                   TRANSIENT   ``mismatched response`` (aborted)
=============================================  ==========  ====================================

When the association ends in the middle, instances already answered keep their results; the
one in flight and those not yet sent become TRANSIENT.

Why responses are not read with ``Association.send_c_store``: see gateway/forward/dimse_link.py.
"""

from __future__ import annotations

import queue
import ssl
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

from gateway.exceptions import ConfigError, GatewayError
from gateway.forward.base import Outcome, OutgoingInstance, ProbeResult, SendResult
from gateway.forward.dimse_link import (
    Response,
    ResponseTap,
    accepted_context_id,
    association_failure,
    drain,
    end_association,
    even_length,
    pause_reactor,
    rejected_contexts,
    send_request,
    set_tcp_nodelay,
)

__all__ = ["DEFAULT_MAX_PDU", "MAX_PRESENTATION_CONTEXTS", "CStoreSender", "status_outcome"]

MAX_PRESENTATION_CONTEXTS = 128
"""At most 128 contexts fit one association (context ids are the odd numbers 1..255)."""

DEFAULT_MAX_PDU = 16382
"""What we ask the peer to send us (responses only, so small is fine); pynetdicom's default."""

_C_STORE_RSP = 0x8001
_POLL = 0.25  # seconds between liveness checks while waiting for a response


def status_outcome(status: int) -> tuple[Outcome, bool]:
    """Map a C-STORE response status to (outcome, warning); table in the module docstring."""
    if status == 0x0000:
        return Outcome.DELIVERED, False
    if status in (0x0001, 0x0111) or 0xB000 <= status <= 0xBFFF:
        return Outcome.DELIVERED, True
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0210, 0xFE00):
        return Outcome.TRANSIENT, False
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or 0x0100 <= status <= 0x02FF:
        return Outcome.PERMANENT, False
    return Outcome.TRANSIENT, False


_STATUS_TEXT = {
    0x0000: "success",
    0x0001: "warning",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
    0xFE00: "cancelled",
}


def _status_text(status: int) -> str:
    if status in _STATUS_TEXT:
        return _STATUS_TEXT[status]
    if 0xA700 <= status <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= status <= 0xA9FF:
        return "data set does not match SOP class"
    if 0xC000 <= status <= 0xCFFF:
        return "cannot understand"
    return "unknown status"


class _AssociationLost(Exception):
    """The association cannot carry more requests; ``result`` settles the instance in flight."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.detail)
        self.result = result


class CStoreSender:
    """Sends batches to a DICOM Storage SCP with C-STORE; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        ae_title: str,
        host: str,
        port: int,
        calling_ae_title: str = "GATEWAY",
        acse_timeout: float = 30.0,
        dimse_timeout: float = 120.0,
        network_timeout: float = 60.0,
        max_pdu: int = DEFAULT_MAX_PDU,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        _check_ae_title(name, "ae_title", ae_title)
        _check_ae_title(name, "calling_ae_title", calling_ae_title)
        if not 0 < port < 65536:
            raise ConfigError(f"destination {name!r}: port must be 1-65535, got {port}")
        for key, value in (
            ("acse_timeout", acse_timeout),
            ("dimse_timeout", dimse_timeout),
            ("network_timeout", network_timeout),
        ):
            if not 0 < value < float("inf"):
                # A finite DIMSE timeout is what guarantees a lost response cannot hang a worker.
                raise ConfigError(f"destination {name!r}: {key} must be a positive number")
        if max_pdu < 0:
            raise ConfigError(f"destination {name!r}: max_pdu must be 0 (unlimited) or more")
        self.name = name
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.calling_ae_title = calling_ae_title
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.max_pdu = max_pdu
        self.ssl_context = ssl_context

    # -- Sender protocol ---------------------------------------------------------------------

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        """Store every instance of ``batch``; one result per instance, in batch order."""
        settled = {result.delivery_id: result for result in self.send_each(batch)}
        return [settled[inst.delivery_id] for inst in batch]

    def send_each(
        self,
        batch: Sequence[OutgoingInstance],
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> Generator[SendResult, None, None]:
        """Store ``batch``, yielding each instance's result as soon as it is settled.

        For C-MOVE sub-operations (gateway/dimse/retrieve.py): ``move_originator`` is the
        (AE title, Message ID) of the C-MOVE request, sent in every C-STORE-RQ. Results come
        in association order (instances grouped by presentation contexts). Closing the
        iterator early (a cancelled C-MOVE) releases the association after the instance in
        flight; instances not reached get no result.
        """
        for group in _association_groups(batch):
            yield from self._send_over_one_association(group, move_originator)

    def close(self) -> None:
        """Nothing to release: every batch opens and closes its own association."""

    def probe(self) -> ProbeResult:
        """The idle probe: one association and a C-ECHO (gateway/forward/verification.py)."""
        from gateway.forward.verification import echo

        return echo(self)

    # -- one association ---------------------------------------------------------------------

    def _send_over_one_association(
        self, instances: Sequence[OutgoingInstance], move_originator: tuple[str, int] | None
    ) -> Iterator[SendResult]:
        tap = ResponseTap()
        assoc = self._associate(instances, tap)
        if not assoc.is_established:
            yield from self._association_failed(assoc, tap, instances)
            return
        set_tcp_nodelay(assoc)
        healthy = True
        try:
            pause_reactor(assoc)
            message_ids = _message_ids()
            for index, inst in enumerate(instances):
                try:
                    result = self._store(assoc, tap, inst, next(message_ids), move_originator)
                except _AssociationLost as lost:
                    healthy = False
                    yield lost.result
                    why = f"not sent: the association ended before it ({lost.result.status})"
                    for rest in instances[index + 1 :]:
                        yield SendResult(rest.delivery_id, Outcome.TRANSIENT, "not sent", why)
                    break
                yield result
        finally:
            end_association(assoc, release=healthy)

    def _associate(self, instances: Sequence[OutgoingInstance], tap: ResponseTap) -> Association:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.connection_timeout = self.acse_timeout
        contexts = [build_context(sop, ts) for sop, ts in _syntaxes(instances)]
        tls = (self.ssl_context, self.host) if self.ssl_context is not None else None
        return ae.associate(
            self.host,
            self.port,
            contexts=contexts,
            ae_title=self.ae_title,
            max_pdu=self.max_pdu,
            tls_args=tls,
            evt_handlers=tap.handlers(),
        )

    def _association_failed(
        self, assoc: Association, tap: ResponseTap, instances: Sequence[OutgoingInstance]
    ) -> list[SendResult]:
        peer = f"{self.ae_title}@{self.host}:{self.port}"
        rejected = rejected_contexts(assoc)
        if rejected and not assoc.accepted_contexts:
            return [self._context_rejected(inst, rejected) for inst in instances]
        status, detail = association_failure(assoc, tap, peer)
        return [SendResult(i.delivery_id, Outcome.TRANSIENT, status, detail) for i in instances]

    def _context_rejected(
        self, inst: OutgoingInstance, rejected: dict[tuple[str, str], tuple[int | None, str]]
    ) -> SendResult:
        result, why = rejected.get((inst.sop_class_uid, inst.transfer_syntax_uid), (None, "?"))
        detail = (
            f"{self.ae_title} does not accept SOP class {_uid_name(inst.sop_class_uid)} with "
            f"transfer syntax {_uid_name(inst.transfer_syntax_uid)} ({why}); objects go as "
            "stored unless the destination sets transform.transfer_syntax (docs/transforms.md)"
        )
        # "Abstract/transfer syntax not supported" is configuration; a bare user or provider
        # rejection of one context gives no reason to believe it will last.
        outcome = Outcome.PERMANENT if result in (0x03, 0x04, None) else Outcome.TRANSIENT
        return SendResult(inst.delivery_id, outcome, "context rejected", detail)

    # -- one instance ------------------------------------------------------------------------

    def _store(
        self,
        assoc: Association,
        tap: ResponseTap,
        inst: OutgoingInstance,
        message_id: int,
        move_originator: tuple[str, int] | None = None,
    ) -> SendResult:
        """Send one C-STORE and settle it. The one place where foreign errors become results.

        Raises _AssociationLost when the association can carry no further request.
        """
        phase = "read"
        try:
            with inst.local_file() as stored, even_length(stored) as path:
                prepared = self._prepare(assoc, inst, path, message_id, move_originator)
                if isinstance(prepared, SendResult):
                    return prepared
                phase = "send"  # from here on the peer may hold part of the message
                send_request(assoc, *prepared)
                phase = "sent"
        except (OSError, GatewayError) as exc:
            if phase == "read":
                detail = f"cannot read the stored instance: {exc}"
                return SendResult(inst.delivery_id, Outcome.TRANSIENT, "spool", detail)
            if phase == "send":
                detail = f"sending failed half-way, aborted: {exc}"
                raise _AssociationLost(self._lost(inst, "association aborted", detail)) from exc
            # "sent": only releasing the local copy failed; the request is complete.
        return self._await_response(assoc, tap, inst, message_id)

    def _prepare(
        self,
        assoc: Association,
        inst: OutgoingInstance,
        path: Path,
        message_id: int,
        move_originator: tuple[str, int] | None = None,
    ) -> tuple[C_STORE, int] | SendResult:
        """The C-STORE request for ``path`` and its context id, or why it cannot be sent."""
        try:
            meta, offset = split_dataset(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_instance = str(meta.MediaStorageSOPInstanceUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception as exc:  # untrusted bytes: pydicom raises many kinds on garbage
            detail = f"the stored file is not a readable DICOM Part 10 file: {exc}"
            return SendResult(inst.delivery_id, Outcome.PERMANENT, "unreadable", detail)
        stored = (sop_class, syntax)
        expected = (inst.sop_class_uid, inst.transfer_syntax_uid)
        if stored != expected:
            # Never send one object under another delivery's name.
            detail = (
                "the stored file's meta (SOP class, transfer syntax) "
                f"{stored} differs from the database's {expected}"
            )
            return SendResult(inst.delivery_id, Outcome.PERMANENT, "wrong file", detail)
        # Stale file meta (the sender's command named another instance UID than the data set
        # holds) is accepted at ingest; the data set's UID, as recorded, is what we announce.
        if sop_instance != inst.sop_instance_uid:
            sop_instance = inst.sop_instance_uid
        context_id = accepted_context_id(assoc, sop_class, syntax)
        if context_id is None:
            return self._context_rejected(inst, rejected_contexts(assoc))
        request = C_STORE()
        request.MessageID = message_id
        request.AffectedSOPClassUID = UID(sop_class)
        request.AffectedSOPInstanceUID = UID(sop_instance)
        request.Priority = 2  # low, as pynetdicom and most SCUs send
        if move_originator is not None:
            request.MoveOriginatorApplicationEntityTitle = move_originator[0]
            request.MoveOriginatorMessageID = move_originator[1]
        # The same attribute send_c_store sets in chunked mode: the encoder streams the file
        # from `offset` (just after the meta group) in PDU-sized reads.
        request._dataset_path = (path, offset)
        return request, context_id

    def _await_response(
        self, assoc: Association, tap: ResponseTap, inst: OutgoingInstance, message_id: int
    ) -> SendResult:
        deadline = time.monotonic() + self.dimse_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f"no C-STORE response within {self.dimse_timeout:g} s; aborted"
                raise _AssociationLost(self._lost(inst, "no response", detail))
            try:
                response = tap.get(timeout=min(_POLL, remaining))
            except queue.Empty:
                if not assoc.dul.is_alive():
                    detail = "the connection ended while waiting for the C-STORE response"
                    raise _AssociationLost(
                        self._lost(inst, "association aborted", detail)
                    ) from None
                continue
            if response is None:
                detail = "the peer aborted or closed the connection before answering"
                raise _AssociationLost(self._lost(inst, "association aborted", detail))
            drain(assoc)
            return self._settle(inst, message_id, response)

    def _settle(self, inst: OutgoingInstance, message_id: int, rsp: Response) -> SendResult:
        if (
            rsp.command_field != _C_STORE_RSP
            or rsp.message_id_responded_to != message_id
            or (
                rsp.affected_sop_instance_uid is not None
                and rsp.affected_sop_instance_uid != inst.sop_instance_uid
            )
        ):
            field = rsp.command_field if rsp.command_field is not None else 0
            detail = (
                f"expected the C-STORE response to message {message_id} for "
                f"{inst.sop_instance_uid}, got command 0x{field:04X} answering message "
                f"{rsp.message_id_responded_to} for {rsp.affected_sop_instance_uid}; aborted"
            )
            raise _AssociationLost(self._lost(inst, "mismatched response", detail))
        if rsp.status is None:
            detail = "the C-STORE response carried no status; aborted"
            raise _AssociationLost(self._lost(inst, "invalid response", detail))
        status = rsp.status
        outcome, warning = status_outcome(status)
        text = f"0x{status:04X}"
        detail = "" if status == 0 else _status_text(status)
        if rsp.error_comment:
            detail = f"{detail}: {rsp.error_comment}"
        return SendResult(inst.delivery_id, outcome, text, detail, warning=warning)

    def _lost(self, inst: OutgoingInstance, status: str, detail: str) -> SendResult:
        return SendResult(inst.delivery_id, Outcome.TRANSIENT, status, detail)


# -- planning ----------------------------------------------------------------------------------


def _syntaxes(instances: Sequence[OutgoingInstance]) -> list[tuple[str, str]]:
    """Distinct (SOP class, transfer syntax) pairs, in first-seen order."""
    return list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))


def _association_groups(batch: Sequence[OutgoingInstance]) -> list[list[OutgoingInstance]]:
    """Split ``batch`` so no association needs more than 128 presentation contexts."""
    pairs = _syntaxes(batch)
    if len(pairs) <= MAX_PRESENTATION_CONTEXTS:
        return [list(batch)] if batch else []
    group_of = {pair: n // MAX_PRESENTATION_CONTEXTS for n, pair in enumerate(pairs)}
    groups: list[list[OutgoingInstance]] = [[] for _ in range(max(group_of.values()) + 1)]
    for inst in batch:
        groups[group_of[(inst.sop_class_uid, inst.transfer_syntax_uid)]].append(inst)
    return groups


def _message_ids() -> Iterator[int]:
    while True:
        yield from range(1, 65536)


def _check_ae_title(name: str, key: str, value: str) -> None:
    if (
        not 0 < len(value) <= 16
        or not value.strip()
        or "\\" in value
        or not all(32 <= ord(c) < 127 for c in value)
    ):
        raise ConfigError(
            f"destination {name!r}: {key} {value!r} must be 1-16 printable ASCII characters "
            "without a backslash"
        )


def _uid_name(uid: str) -> str:
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"
