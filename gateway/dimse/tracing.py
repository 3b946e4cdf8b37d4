"""Spans for the DIMSE door: one SERVER span per association, one per request inside it.

DIMSE carries no trace headers, so a study's trace starts here. The association span opens when
the association is accepted and ends when it is released, aborted or its connection closes;
each C-STORE span is its child, and ingest (running in the same association thread) nests its
own spans under the C-STORE span. Spans are kept per association object, not in the thread's
current context, so a span never leaks into the next association the thread serves.

The message services (C-FIND, C-MOVE, C-GET, N-ACTION) get one span per request the same way
(`message`): current only while the service runs, so the service describes it from the record
it audits anyway (`describe_find`, `describe_retrieve`, `describe_commitment`). C-STORE
sub-operations of a retrieve are span events, not spans: one per instance would multiply the
spans of a large move, and an event costs nothing when the span is not recorded. Without a
span exporter nothing here is recorded (parentbased_always_off): the describe functions return
at their first line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from gateway.dimse.association import Association
from gateway.telemetry import (
    CALLED_AE,
    CALLING_AE,
    COMMITMENT_ITEMS,
    COMPLETED,
    DICOM_STATUS,
    FAILED,
    MATCHES,
    MOVE_DESTINATION,
    PEER_ADDRESS,
    QR_LEVEL,
    QR_MODEL,
    REASON,
    SOP_UID,
    STUDY_UID,
    TRANSACTION_UID,
    WARNING,
    AttributeValue,
    Telemetry,
    clean,
    mark_error,
)

log = logging.getLogger(__name__)


class AssociationSpans:
    """Opens and closes the spans of the associations of one listener."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._spans: dict[int, Span] = {}
        self._lock = threading.Lock()

    def accepted(self, association: Association) -> None:
        """The association span starts a new trace."""
        calling, called, peer = _parties(association)
        span = self._telemetry.tracer.start_span(
            "DIMSE association",
            kind=SpanKind.SERVER,
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # always a new trace
            attributes=clean({CALLING_AE: calling, CALLED_AE: called, PEER_ADDRESS: peer}),
        )
        with self._lock:
            self._spans[id(association)] = span
        log.info(
            "association from %s@%s to %s accepted",
            calling,
            peer,
            called,
            extra={
                "fields": {
                    "event": "association.accepted",
                    CALLING_AE: calling,
                    CALLED_AE: called,
                    PEER_ADDRESS: peer,
                }
            },
        )

    def ended(self, association: Association, how: str) -> None:
        with self._lock:
            span = self._spans.pop(id(association), None)
        if span is None:
            return
        span.set_attribute("dicom.association.end", how)
        span.end()

    @contextlib.contextmanager
    def store(self, association: Association, sop_instance_uid: str) -> Iterator[Span]:
        """The current span for one C-STORE, a child of its association's span."""
        with self._lock:
            parent = self._spans.get(id(association))
        calling, called, peer = _parties(association)
        with self._telemetry.span(
            "DIMSE C-STORE",
            kind=SpanKind.SERVER,
            parent=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={
                SOP_UID: sop_instance_uid or None,
                CALLING_AE: calling,
                CALLED_AE: called,
                PEER_ADDRESS: peer,
            },
        ) as span:
            yield span

    @contextlib.contextmanager
    def message(self, association: Association, command_field: int) -> Iterator[Span]:
        """The current span for one C-FIND, C-MOVE, C-GET or N-ACTION, a child of its
        association's span; the service adds what it found out (`describe_*`)."""
        with self._lock:
            parent = self._spans.get(id(association))
        calling, called, peer = _parties(association)
        with self._telemetry.span(
            _MESSAGE_NAMES.get(command_field, f"DIMSE 0x{command_field:04X}"),
            kind=SpanKind.SERVER,
            parent=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={CALLING_AE: calling, CALLED_AE: called, PEER_ADDRESS: peer},
        ) as span:
            yield span


_MESSAGE_NAMES = {
    0x0010: "DIMSE C-GET",
    0x0020: "DIMSE C-FIND",
    0x0021: "DIMSE C-MOVE",
    0x0130: "DIMSE N-ACTION",
}
# Final statuses that are not errors: success, cancel (the caller asked), and 0xB000 (the
# retrieve completed with some failed sub-operations: the counts say how many).
_NOT_ERRORS = frozenset({0x0000, 0xFE00, 0xB000})


def describe_find(record: Mapping[str, Any], status: int) -> None:
    """Describe the current C-FIND span from the record its audit event is written from."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    _finish(
        span,
        {
            QR_MODEL: record.get("model"),
            QR_LEVEL: record.get("level"),
            MATCHES: record.get("matches"),
        },
        status,
        record.get("reason"),
    )


def describe_retrieve(record: Mapping[str, Any], status: int) -> None:
    """Describe the current C-MOVE / C-GET span from its audit record (see retrieve.py)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    destination = record.get("destination")
    studies = list(record.get("studies") or [])
    _finish(
        span,
        {
            QR_MODEL: record.get("model"),
            QR_LEVEL: record.get("level"),
            STUDY_UID: studies[0] if len(studies) == 1 else (studies or None),
            MOVE_DESTINATION: destination.get("ae_title")
            if isinstance(destination, dict)
            else destination or None,
            MATCHES: record.get("matches"),
            COMPLETED: record.get("completed"),
            FAILED: record.get("failed"),
            WARNING: record.get("warning"),
        },
        status,
        record.get("reason"),
    )


def describe_commitment(transaction_uid: str | None, items: int | None, status: int) -> None:
    """Describe the current N-ACTION (Request Storage Commitment) span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    _finish(span, {TRANSACTION_UID: transaction_uid, COMMITMENT_ITEMS: items}, status, None)


def suboperation_event(span: Span, sop_uid: str, status: int | None, reason: str) -> None:
    """One C-STORE sub-operation of a retrieve, as an event on the retrieve's span.

    The SDK keeps at most OTEL_SPAN_EVENT_COUNT_LIMIT (128) events per span; the counts on the
    span stay exact beyond that.
    """
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue | None] = {
        SOP_UID: sop_uid,
        DICOM_STATUS: "not sent" if status is None else f"0x{status:04X}",
        REASON: reason or None,
    }
    span.add_event("C-STORE sub-operation", clean(attributes))


def _finish(
    span: Span, attributes: Mapping[str, AttributeValue | None], status: int, reason: Any
) -> None:
    span.set_attributes(clean({**attributes, DICOM_STATUS: f"0x{status:04X}"}))
    if status not in _NOT_ERRORS:
        mark_error(span, f"answered 0x{status:04X}" + (f": {reason}" if reason else ""))


def _parties(association: Association) -> tuple[str | None, str | None, str | None]:
    return association.calling_ae or None, association.called_ae or None, association.peer or None
