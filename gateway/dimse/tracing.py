"""Spans for the DIMSE door: one SERVER span per association, one per C-STORE inside it.

DIMSE carries no trace headers, so a study's trace starts here. The association span opens when
the association is accepted and ends when it is released, aborted or its connection closes;
each C-STORE span is its child, and ingest (running in the same association thread) nests its
own spans under the C-STORE span. Spans are kept per association object, not in the thread's
current context, so a span never leaks into the next association the thread serves.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from gateway.dimse.association import Association
from gateway.telemetry import (
    CALLED_AE,
    CALLING_AE,
    PEER_ADDRESS,
    SOP_UID,
    Telemetry,
    clean,
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


def _parties(association: Association) -> tuple[str | None, str | None, str | None]:
    return association.calling_ae or None, association.called_ae or None, association.peer or None
