"""C-MOVE and C-GET SCP: Patient Root and Study Root Query/Retrieve MOVE and GET (PS3.4 C.4.2,
C.4.3) at patient, study, series and image level.

Both find the stored instances the identifier's unique keys name (the QIDO-RS matcher, purged
instances excluded: gateway/db/retrieve.py) and send each one as stored, in its own transfer
syntax, never transcoded:
* C-MOVE opens an association to the Move Destination, which must be configured in
  `dimse.move_destinations` (else 0xA801), with the C-STORE sender of the delivery queue
  (gateway/forward/cstore.py), naming the C-MOVE's caller and Message ID as Move Originator.
  A destination that refuses an instance's SOP class or transfer syntax fails that
  sub-operation with the reason.
* C-GET sends the C-STORE sub-operations on the caller's association, on a presentation
  context the caller accepted as storage SCP (role selection) for the instance's SOP class in
  exactly its stored transfer syntax; without one the sub-operation fails. Data sets stream
  from the spool (file or S3) in PDU-sized reads.

After each sub-operation a pending response (0xFF00) carries the remaining, completed, failed
and warning counts; a C-CANCEL is honoured between sub-operations (0xFE00). The final status is
0x0000 when every sub-operation completed, 0xB000 when some failed or had warnings, 0xA702
when none completed; with failures the final identifier holds the Failed SOP Instance UID List
and the Error Comment the first reason. Every retrieve is logged and audited (`dimse.c_move`,
`dimse.c_get`) once per study it sent (the event names the study and, when the retrieve
covered several, that study's counts under `study`), and described on its span
(gateway/dimse/tracing.py).
"""

from __future__ import annotations

import io
import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO

from gateway.config import Settings, TlsSettings
from gateway.db import Database
from gateway.db.engine import Row
from gateway.db.retrieve import instances_matching
from gateway.destinations import MoveDestination
from gateway.dicom.structure import data_set_offset
from gateway.dimse.answers import failed_uid_list
from gateway.dimse.association import Association
from gateway.dimse.channel import C_GET_RQ, C_MOVE_RQ, MessageChannel, Request
from gateway.dimse.commands import STATUS_UNRECOGNISED_OPERATION
from gateway.dimse.identifiers import (
    MODEL_OF,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_UNABLE_TO_PROCESS,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    IdentifierError,
    parse_retrieve,
    read_identifier,
)
from gateway.dimse.suboperations import STATUS_SUCCESS, STATUS_WARNING, Progress
from gateway.dimse.tracing import describe_retrieve
from gateway.exceptions import GatewayError, InvalidInputError, StoreError
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.cstore import CStoreSender
from gateway.spool import Spool

log = logging.getLogger(__name__)

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_CANNOT_COUNT = 0xA701  # out of resources: unable to calculate the number of matches
STATUS_UNKNOWN_DESTINATION = 0xA801

_HEAD = 64 * 1024  # the Part 10 header of a stored object fits in this (it is ours)


class RetrieveService:
    """Answers C-MOVE and C-GET on both information models; a `MessageService`."""

    sop_classes = frozenset({PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_GET})

    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: Spool,
        audit: Callable[..., None],
        *,
        client_tls: Callable[[TlsSettings, str], ssl.SSLContext] | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._spool = spool
        self._audit = audit
        # Built now, so a bad certificate stops the start-up rather than the first C-MOVE.
        self._tls: dict[str, ssl.SSLContext] = {
            title: client_tls(target.tls, f"dimse.move_destinations.{title}.tls")
            for title, target in settings.dimse.move_destinations.items()
            if target.tls is not None and client_tls is not None
        }

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> None:
        sop_class = request.context.abstract_syntax
        is_move = sop_class in (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
        expected = C_MOVE_RQ if is_move else C_GET_RQ
        if request.command_field != expected:
            channel.respond(
                request,
                STATUS_UNRECOGNISED_OPERATION,
                ErrorComment=f"only {'C-MOVE' if is_move else 'C-GET'} on this context",
            )
            return
        operation = "C-MOVE" if is_move else "C-GET"
        record: dict[str, Any] = {"model": MODEL_OF[sop_class].value, "peer": association.peer}
        started = time.monotonic()
        status = STATUS_UNABLE_TO_PROCESS  # what handlers.py answers if we raise
        try:
            status = self._retrieve(association, channel, request, is_move, record)
        finally:
            self._record(association, operation, status, record, time.monotonic() - started)

    # -- the common part ---------------------------------------------------------------------

    def _retrieve(
        self,
        association: Association,
        channel: MessageChannel,
        request: Request,
        is_move: bool,
        record: dict[str, Any],
    ) -> int:
        destination = None
        if is_move:
            title = str(request.command.get("MoveDestination", "")).strip()
            record["destination"] = title
            destination = self._settings.dimse.move_destinations.get(title)
            if destination is None:
                record["reason"] = "move destination unknown"
                channel.respond(
                    request,
                    STATUS_UNKNOWN_DESTINATION,
                    ErrorComment="Move destination unknown: add it to dimse.move_destinations",
                )
                return STATUS_UNKNOWN_DESTINATION
        try:
            query = parse_retrieve(
                read_identifier(request), MODEL_OF[request.context.abstract_syntax]
            )
        except IdentifierError as exc:
            record["reason"] = exc.comment
            channel.respond(request, exc.status, None, **exc.response_elements())
            return exc.status
        record.update(level=query.level.name, query=dict(query.query))
        try:
            rows = [row for row in instances_matching(self._db, query.matches) if row["spool_key"]]
        except InvalidInputError as exc:
            record["reason"] = str(exc)
            channel.respond(request, STATUS_IDENTIFIER_MISMATCH, ErrorComment=str(exc))
            return STATUS_IDENTIFIER_MISMATCH
        except StoreError as exc:
            log.error("retrieve: the database is unavailable: %s", exc)
            record["reason"] = str(exc)
            channel.respond(
                request, STATUS_CANNOT_COUNT, ErrorComment="gateway database unavailable"
            )
            return STATUS_CANNOT_COUNT
        record["matches"] = len(rows)
        studies = sorted({str(row["study_instance_uid"]) for row in rows})
        record["studies"] = studies[:20]
        progress = Progress.of(rows)
        if destination is not None:
            record["destination"] = {
                "ae_title": destination.ae_title,
                "host": destination.host,
                "port": destination.port,
            }
            cancelled = self._move(association, channel, request, rows, progress, destination)
        else:
            cancelled = self._get(channel, request, rows, progress)
        record.update(
            completed=progress.completed, failed=progress.failed, warning=progress.warning
        )
        if len(progress.studies) > 1:
            record["per_study"] = {
                study: {
                    "matches": c.matches,
                    "completed": c.completed,
                    "failed": c.failed,
                    "warning": c.warning,
                }
                for study, c in progress.studies.items()
            }
        if progress.reasons:
            record["reasons"] = progress.reasons[:10]
        return self._final(channel, request, progress, cancelled)

    def _final(
        self, channel: MessageChannel, request: Request, progress: Progress, cancelled: bool
    ) -> int:
        identifier = failed_uid_list(progress.failed_uids) if progress.failed_uids else None
        elements: dict[str, object] = dict(progress.counts(remaining=cancelled))
        status = STATUS_CANCEL if cancelled else progress.final_status()
        if progress.reasons and not cancelled:
            elements["ErrorComment"] = f"{progress.failed} failed: {progress.reasons[0]}"
        channel.respond(request, status, identifier, **elements)
        return status

    def _pending(self, channel: MessageChannel, request: Request, progress: Progress) -> None:
        if progress.remaining > 0:
            channel.respond(request, STATUS_PENDING, None, **progress.counts(remaining=True))

    # -- C-MOVE ----------------------------------------------------------------------------

    def _move(
        self,
        association: Association,
        channel: MessageChannel,
        request: Request,
        rows: list[Row],
        progress: Progress,
        destination: MoveDestination,
    ) -> bool:
        """Send `rows` to the move destination; True if the caller cancelled."""
        if not rows:
            return False
        dimse = self._settings.dimse
        key = f"dimse.move_destinations.{destination.ae_title}"
        sender = CStoreSender(
            name=key,
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            calling_ae_title=self._settings.node.ae_title,
            acse_timeout=dimse.acse_timeout,
            dimse_timeout=dimse.dimse_timeout,
            network_timeout=dimse.network_timeout,
            ssl_context=self._tls.get(destination.ae_title),
        )
        uid_of = {index: str(row["sop_instance_uid"]) for index, row in enumerate(rows)}
        if channel.cancelled(request.message_id):
            return True
        results = sender.send_each(
            [self._outgoing(index, row) for index, row in enumerate(rows)],
            move_originator=(association.calling_ae, request.message_id),
        )
        try:
            for result in results:
                status = _status_of(result)
                progress.settle(uid_of[result.delivery_id], status, _reason(result))
                if channel.cancelled(request.message_id):
                    return True
                self._pending(channel, request, progress)
        finally:
            results.close()  # releases the destination's association
        return False

    def _outgoing(self, index: int, row: Row) -> OutgoingInstance:
        key = str(row["spool_key"])
        return OutgoingInstance(
            delivery_id=index,
            study_instance_uid=str(row["study_instance_uid"]),
            series_instance_uid=str(row["series_instance_uid"]),
            sop_instance_uid=str(row["sop_instance_uid"]),
            sop_class_uid=str(row["sop_class_uid"]),
            transfer_syntax_uid=str(row["transfer_syntax_uid"]),
            size=int(row["size"]),
            open=partial(self._spool.open, key),
            local_file=partial(self._spool.local_file, key),
        )

    # -- C-GET -----------------------------------------------------------------------------

    def _get(
        self, channel: MessageChannel, request: Request, rows: list[Row], progress: Progress
    ) -> bool:
        """Send `rows` on the caller's association; True if the caller cancelled."""
        for row in rows:
            if channel.cancelled(request.message_id):
                return True
            sop_uid = str(row["sop_instance_uid"])
            sop_class = str(row["sop_class_uid"])
            syntax = str(row["transfer_syntax_uid"])
            context = next(
                (
                    cx
                    for cx in channel.contexts.values()
                    if cx.as_scu
                    and cx.abstract_syntax == sop_class
                    and cx.transfer_syntax == syntax
                ),
                None,
            )
            if context is None:
                progress.settle(
                    sop_uid,
                    None,
                    f"the SCU accepted no presentation context for SOP class {sop_class} "
                    f"in transfer syntax {syntax}",
                )
            else:
                self._get_one(channel, context.context_id, row, progress)
            self._pending(channel, request, progress)
        return False

    def _get_one(
        self, channel: MessageChannel, context_id: int, row: Row, progress: Progress
    ) -> None:
        sop_uid, sop_class = str(row["sop_instance_uid"]), str(row["sop_class_uid"])
        try:
            stream = self._spool.open(str(row["spool_key"]))
        except (GatewayError, OSError) as exc:
            progress.settle(sop_uid, None, f"cannot read the stored instance: {exc}")
            return
        with stream:
            try:
                data_set = io.BufferedReader(_DataSetReader(stream, int(row["size"])), _HEAD * 4)
            except (GatewayError, OSError) as exc:
                progress.settle(sop_uid, None, f"cannot read the stored instance: {exc}")
                return
            # From here a read error would leave a message half-sent: it ends the association.
            response = channel.send_c_store(context_id, sop_class, sop_uid, data_set)
        status = int(response.command.get("Status", STATUS_UNABLE_TO_PROCESS))
        comment = response.command.get("ErrorComment")
        progress.settle(sop_uid, status, f"0x{status:04X}" + (f" {comment}" if comment else ""))

    # -- audit -----------------------------------------------------------------------------

    def _record(
        self,
        association: Association,
        operation: str,
        status: int,
        record: dict[str, Any],
        seconds: float,
    ) -> None:
        record["status"] = f"0x{status:04X}"
        record["seconds"] = round(seconds, 3)
        destination = record.get("destination")
        where = (
            destination.get("ae_title") if isinstance(destination, dict) else destination
        ) or association.calling_ae
        log.info(
            "%s from %s@%s to %s: %s level, %d instance(s): %d completed, %d failed, "
            "%d warning, status 0x%04X",
            operation,
            association.calling_ae,
            association.peer,
            where,
            record.get("level", "?"),
            record.get("matches", 0),
            record.get("completed", 0),
            record.get("failed", 0),
            record.get("warning", 0),
            status,
        )
        for reason in record.get("reasons", [])[:3]:
            log.warning("%s to %s: a sub-operation failed: %s", operation, where, reason)
        describe_retrieve(record, status)
        outcome = {STATUS_SUCCESS: "success", STATUS_CANCEL: "cancelled", STATUS_WARNING: "partial"}
        # One event per study retrieved, so the study's own events (`trace`, `audit --study`)
        # name everyone who retrieved it; each says what this study's share was.
        per_study: dict[str, Any] = record.pop("per_study", None) or {}
        studies: list[str | None] = list(per_study) or [None]
        for study in studies:
            detail = record if study is None else {**record, "study": per_study[study]}
            try:
                self._audit(
                    "dimse.c_move" if operation == "C-MOVE" else "dimse.c_get",
                    outcome=outcome.get(status, "failed"),
                    actor=association.calling_ae or None,
                    study_uid=study or _only(record.get("studies")),
                    detail=detail,
                )
            except Exception:
                log.exception("could not write audit event for %s", operation)


def _only(studies: Any) -> str | None:
    return str(studies[0]) if isinstance(studies, list) and len(studies) == 1 else None


def _status_of(result: SendResult) -> int | None:
    """The C-STORE status of a C-MOVE sub-operation, None when it was not answered."""
    if result.status.startswith("0x"):
        try:
            return int(result.status, 16)
        except ValueError:
            return None
    return None


def _reason(result: SendResult) -> str:
    if result.outcome is Outcome.DELIVERED and not result.warning:
        return ""
    return f"{result.status}: {result.detail}" if result.detail else result.status


class _DataSetReader(io.RawIOBase):
    """The data set of a stored Part 10 stream, without seeking (S3 streams cannot), padded
    with one NUL when its length is odd (PS3.5 A.5: only a deflated one may be)."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        head = stream.read(_HEAD)
        offset = data_set_offset(io.BytesIO(head))
        if offset > len(head):
            raise GatewayError("the stored object's Part 10 header is larger than 64 KiB")
        self._pending = head[offset:]
        self._stream = stream
        self._pad = b"\x00" if (size - offset) % 2 else b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = self._stream.read(len(buffer)) or self._pad
            if self._pending is self._pad:
                self._pad = b""
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
