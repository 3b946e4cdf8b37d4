"""What the DIMSE listener does for the gateway: association policy, C-ECHO, C-STORE into ingest.

The association loop (gateway/dimse/association.py) calls these in the connection's thread.
C-STORE answers Success only after ingest returned, i.e. after the bytes are durable and the
instance, Decision and deliveries are committed. Every association step is audited
(gateway/dimse/audit.py) and traced (gateway/dimse/tracing.py). The message services
(query/retrieve, storage commitment) are `MessageService`s handed in by the listener's
builder (gateway/dimse/ae.py); requests are dispatched to them by SOP class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.config import Settings
from gateway.dimse.association import Association
from gateway.dimse.audit import AssociationAudit
from gateway.dimse.channel import ChannelError, MessageChannel, Request
from gateway.dimse.commands import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Command,
)
from gateway.dimse.negotiation import REJECT_CALLED_AE, REJECT_CALLING_AE, AssociationRequest
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

STATUS_PROCESSING_FAILURE = 0x0110  # N-ACTION and other DIMSE-N services


class MessageService(Protocol):
    """A DIMSE service answered with whole messages (C-FIND, C-MOVE, C-GET, N-ACTION)."""

    @property
    def sop_classes(self) -> frozenset[str]:
        """The SOP classes (abstract syntaxes) this service serves."""

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> None:
        """Answer `request`; every response is sent on `channel` before returning."""


class DimseHandlers:
    """The services of one listener; dependencies are injected, nothing is global."""

    def __init__(
        self,
        settings: Settings,
        ingestor: Ingestor,
        audit: Callable[..., None],
        telemetry: Telemetry | None = None,
        services: Sequence[MessageService] = (),
    ) -> None:
        self._services = {uid: service for service in services for uid in service.sop_classes}
        self._settings = settings
        self._ingestor = ingestor
        self._audit = AssociationAudit(self._safe_audit)
        self._spans = AssociationSpans(telemetry or Telemetry.disabled())
        self._write_audit = audit

    def admit(self, request: AssociationRequest, peer: str) -> tuple[int, int, int] | None:
        """Enforce the calling-AE allow-list (AE title bound to a host) and our called AE."""
        allowed = self._settings.dimse.allowed_callers
        if allowed is not None and not any(
            entry.ae_title == request.calling_ae and (entry.host is None or entry.host == peer)
            for entry in allowed
        ):
            log.warning(
                "rejected association from %s@%s to %s: calling AE not in "
                "dimse.allowed_callers for this host",
                request.calling_ae,
                peer,
                request.called_ae,
            )
            return REJECT_CALLING_AE
        if self._settings.dimse.require_called_ae and (
            request.called_ae != self._settings.node.ae_title
        ):
            log.warning(
                "rejected association from %s@%s: called AE %r is not ours (%s)",
                request.calling_ae,
                peer,
                request.called_ae,
                self._settings.node.ae_title,
            )
            return REJECT_CALLED_AE
        return None

    def rejected(self, request: AssociationRequest, peer: str, reason: str) -> None:
        self._audit.rejected(request.calling_ae, peer, request.called_ae, reason)

    def accepted(self, association: Association) -> None:
        self._spans.accepted(association)
        self._audit.accepted(association)

    def ended(self, association: Association, how: str) -> None:
        self._spans.ended(association, how)
        self._audit.ended(association, how)

    def on_tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake failed (no or untrusted client certificate, not TLS at all)."""
        self._safe_audit(
            "association.rejected",
            outcome="rejected",
            actor=peer,
            detail={"peer": peer, "reason": reason},
        )

    def echo(self, association: Association, command: Command) -> int:
        return STATUS_SUCCESS

    @property
    def message_sop_classes(self) -> frozenset[str]:
        return frozenset(self._services)

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> bool:
        """Dispatch to the service of the request's SOP class; a failure it did not answer
        becomes a failure status, never a dropped association."""
        service = self._services.get(request.context.abstract_syntax)
        if service is None:
            return False
        try:
            with self._spans.message(association, request.command_field):
                service.serve(association, channel, request)
        except (ChannelError, OSError):
            raise
        except Exception as exc:
            log.exception(
                "%s from %s@%s failed", _name(request), association.calling_ae, association.peer
            )
            status = (
                STATUS_PROCESSING_FAILURE
                if request.command_field >= 0x0100
                else STATUS_CANNOT_UNDERSTAND
            )
            channel.respond(request, status, ErrorComment=f"internal error: {type(exc).__name__}")
        return True

    def store(
        self, association: Association, command: Command, path: Path
    ) -> tuple[int, str | None]:
        """Ingest one received instance; answer only after it is durable (one span each)."""
        with self._spans.store(association, command.affected_sop_instance_uid) as span:
            status, comment = self._store(association, path, span)
            set_attributes(span, {DICOM_STATUS: f"0x{status:04X}"})
            if status != STATUS_SUCCESS:
                mark_error(span, f"C-STORE answered 0x{status:04X}")
            return status, comment

    def _store(self, association: Association, path: Path, span: Any) -> tuple[int, str | None]:
        source = Source(
            door="dimse",
            calling_ae=association.calling_ae,
            called_ae=association.called_ae,
            peer=association.peer,
        )
        try:
            result = self._ingestor.accept_file(path, source)
        except InvalidInputError as exc:
            return exc.dicom_status, str(exc)
        except (SpoolError, StoreError) as exc:
            log.error("could not store an instance from %s: %s", source.who, exc)
            self._store_failed(source, STATUS_OUT_OF_RESOURCES, str(exc))
            return STATUS_OUT_OF_RESOURCES, f"gateway storage unavailable: {exc}"
        except Exception as exc:
            log.exception("unexpected error storing an instance from %s", source.who)
            self._store_failed(source, STATUS_CANNOT_UNDERSTAND, type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND, f"internal error: {type(exc).__name__}"
        set_attributes(
            span,
            {
                STUDY_UID: result.header.study_instance_uid,
                SERIES_UID: result.header.series_instance_uid,
                SOP_UID: result.header.sop_instance_uid,
                BYTES: result.size,
            },
        )
        return STATUS_SUCCESS, None

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
            self._write_audit(kind, **fields)
        except Exception:
            log.exception("could not write audit event %s", kind)


def _name(request: Request) -> str:
    names = {0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0130: "N-ACTION"}
    return names.get(request.command_field, f"command 0x{request.command_field:04X}")
