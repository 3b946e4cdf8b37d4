"""pynetdicom event handlers: association policy, C-ECHO and C-STORE into ingest.

Handlers run in pynetdicom's association threads and call the synchronous, thread-safe
Ingestor directly. C-STORE answers Success only after ingest returned, i.e. after the bytes
are durable and the instance, Decision and deliveries are committed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import EventHandlerType

from gateway.config import Settings
from gateway.dimse.audit import AssociationAudit
from gateway.dimse.server import limit_pdu_length
from gateway.dimse.tracing import AssociationSpans
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.ingest import Ingestor, Source
from gateway.telemetry import (
    BYTES,
    DICOM_STATUS,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    Telemetry,
    mark_error,
    set_attributes,
)

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_ERROR_COMMENT_MAX = 64  # LO


class DimseHandlers:
    """Handlers bound to one listener; dependencies are injected, nothing is global."""

    def __init__(
        self,
        settings: Settings,
        ingestor: Ingestor,
        audit: Callable[..., None],
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._audit = audit
        self._spans = AssociationSpans(telemetry or Telemetry.disabled())

    def bindings(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_REQUESTED, self.on_association_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_ACCEPTED, self._spans.on_accepted),
            (evt.EVT_RELEASED, self._spans.on_released),
            (evt.EVT_ABORTED, self._spans.on_aborted),
            (evt.EVT_CONN_CLOSE, self._spans.on_closed),
            *AssociationAudit(self._safe_audit).bindings(),
        ]

    def on_connection_open(self, event: Any) -> None:
        """Disable Nagle: otherwise every small C-STORE response waits for a delayed ACK."""
        limit_pdu_length(event.assoc, self._settings.dimse.max_pdu)
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                log.debug("could not set TCP_NODELAY")

    def on_association_requested(self, event: Any) -> None:
        """Enforce the calling-AE allow-list (AE title bound to a host) before negotiation."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        host = str(assoc.requestor.address)
        allowed = self._settings.dimse.allowed_callers
        if allowed is not None and not any(
            entry.ae_title == calling and (entry.host is None or entry.host == host)
            for entry in allowed
        ):
            log.warning(
                "rejected association from %s@%s to %s: calling AE not allowed",
                calling,
                host,
                called,
            )
            self._safe_audit(
                "association.rejected",
                outcome="rejected",
                actor=calling,
                detail={
                    "peer": host,
                    "called_ae": called,
                    "reason": "calling AE title not in dimse.allowed_callers for this host",
                },
            )
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE
            assoc.is_rejected = True
            assoc.kill()  # as pynetdicom's own reject path: flushes the A-ASSOCIATE-RJ
            return
        # Accepted associations are audited on EVT_ACCEPTED (gateway/dimse/audit.py).

    def on_tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake failed (no or untrusted client certificate, not TLS at all)."""
        self._safe_audit(
            "association.rejected",
            outcome="rejected",
            actor=peer,
            detail={"peer": peer, "reason": reason},
        )

    def on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def on_store(self, event: Any) -> int | Dataset:
        """Ingest one received instance; answer only after it is durable (one span each)."""
        with self._spans.store(event) as span:
            answer = self._store(event, span)
            status = answer if isinstance(answer, int) else int(answer.Status)
            set_attributes(span, {DICOM_STATUS: f"0x{status:04X}"})
            if status != STATUS_SUCCESS:
                mark_error(span, f"C-STORE answered 0x{status:04X}")
            return answer

    def _store(self, event: Any, span: Any) -> int | Dataset:
        assoc = event.assoc
        source = Source(
            door="dimse",
            calling_ae=str(assoc.requestor.ae_title).strip(),
            called_ae=str(assoc.acceptor.ae_title).strip(),
            peer=str(assoc.requestor.address),
        )
        try:
            path = Path(event.dataset_path)
            result = self._ingestor.accept_file(path, source)
            set_attributes(
                span,
                {
                    STUDY_UID: result.header.study_instance_uid,
                    SERIES_UID: result.header.series_instance_uid,
                    SOP_UID: result.header.sop_instance_uid,
                    BYTES: result.size,
                },
            )
        except InvalidInputError as exc:
            return _failure(exc.dicom_status, str(exc))
        except (SpoolError, StoreError) as exc:
            log.error("could not store an instance from %s: %s", source.who, exc)
            self._store_failed(source, STATUS_OUT_OF_RESOURCES, str(exc))
            return _failure(STATUS_OUT_OF_RESOURCES, f"gateway storage unavailable: {exc}")
        except Exception as exc:
            log.exception("unexpected error storing an instance from %s", source.who)
            self._store_failed(source, STATUS_CANNOT_UNDERSTAND, type(exc).__name__)
            return _failure(STATUS_CANNOT_UNDERSTAND, f"internal error: {type(exc).__name__}")
        return STATUS_SUCCESS

    def _store_failed(self, source: Source, status: int, reason: str) -> None:
        # Refusals (bad data) are audited by ingest; these are our own failures.
        self._safe_audit(
            "instance.failed",
            outcome="failed",
            actor=source.who,
            detail={
                "door": "dimse",
                "peer": source.peer,
                "status": f"0x{status:04X}",
                "reason": reason,
            },
        )

    def _safe_audit(self, kind: str, **fields: Any) -> None:
        try:
            self._audit(kind, **fields)
        except Exception:
            log.exception("could not write audit event %s", kind)


def _failure(status: int, reason: str) -> Dataset:
    response = Dataset()
    response.Status = status
    response.ErrorComment = reason.replace("\\", "/")[:_ERROR_COMMENT_MAX]
    return response
