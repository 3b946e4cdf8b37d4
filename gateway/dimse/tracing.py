"""Spans for the DIMSE door: one SERVER span per association, one per C-STORE inside it.

DIMSE carries no trace headers, so a study's trace starts here. The association span opens when
the association is accepted and ends when it is released, aborted or its connection closes
(whichever pynetdicom reports first); each C-STORE span is its child, and ingest (running in the
same association thread) nests its own spans under the C-STORE span.

pynetdicom may report the events of one association from different threads, so spans are kept
per association object, not in the thread's current context.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

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

    def on_accepted(self, event: Any) -> None:
        """EVT_ACCEPTED: the association span starts a new trace."""
        assoc = event.assoc
        calling, called, peer = _parties(assoc)
        span = self._telemetry.tracer.start_span(
            "DIMSE association",
            kind=SpanKind.SERVER,
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # always a new trace
            attributes=clean({CALLING_AE: calling, CALLED_AE: called, PEER_ADDRESS: peer}),
        )
        with self._lock:
            self._spans[id(assoc)] = span
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

    def on_released(self, event: Any) -> None:
        self._end(event, "released")

    def on_aborted(self, event: Any) -> None:
        self._end(event, "aborted")

    def on_closed(self, event: Any) -> None:
        self._end(event, "closed")

    @contextlib.contextmanager
    def store(self, event: Any) -> Iterator[Span]:
        """The current span for one C-STORE, a child of its association's span."""
        with self._lock:
            parent = self._spans.get(id(event.assoc))
        request = getattr(event, "request", None)
        sop = getattr(request, "AffectedSOPInstanceUID", None)
        calling, called, peer = _parties(event.assoc)
        with self._telemetry.span(
            "DIMSE C-STORE",
            kind=SpanKind.SERVER,
            parent=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={
                SOP_UID: str(sop) if sop else None,
                CALLING_AE: calling,
                CALLED_AE: called,
                PEER_ADDRESS: peer,
            },
        ) as span:
            yield span

    def _end(self, event: Any, how: str) -> None:
        with self._lock:
            span = self._spans.pop(id(event.assoc), None)
        if span is None:
            return
        span.set_attribute("dicom.association.end", how)
        span.end()


def _parties(assoc: Any) -> tuple[str | None, str | None, str | None]:
    try:
        calling = str(assoc.requestor.ae_title).strip() or None
        called = str(assoc.acceptor.ae_title).strip() or None
        peer = str(assoc.requestor.address) or None
    except AttributeError:
        return None, None, None
    return calling, called, peer
