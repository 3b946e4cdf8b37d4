"""Sender middleware: each delivery attempt is a span in the trace of the instances it carries.

A leased batch holds instances of one study, but they may belong to different traces (a study
sent over two associations, or re-sent later). One request can carry only one `traceparent`,
so the batch is split by trace id and each part is sent as its own attempt: a CLIENT span whose
parent is the persisted ingest span of the part's first instance, linked to the ingest spans of
the others. The next gateway therefore continues exactly the trace each instance belongs to.
The split costs an extra request only when one batch mixes traces, which is rare.

Because the parent comes from the database (`instances.trace_context`), an attempt made after a
restart, or by another replica, still lands in the original trace.

The wrapper also records the per-attempt and receive-to-delivered latency histograms and logs
one line per instance and attempt. Counting settled outcomes (delivered, retried, dead) is left
to the worker's `on_settled` hook, which knows the final state.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

from opentelemetry.trace import Link, SpanKind

from gateway.forward.base import (
    Outcome,
    OutgoingInstance,
    ProbeResult,
    Sender,
    SendResult,
    idle_probe,
)
from gateway.telemetry import (
    BYTES,
    DESTINATION,
    DICOM_STATUS,
    HTTP_STATUS_CODE,
    INSTANCES,
    OUTCOME,
    SOP_UID,
    STUDY_UID,
    AttributeValue,
    Telemetry,
    context_from_traceparent,
    link_to,
    mark_error,
    set_attributes,
    trace_id_of,
)

log = logging.getLogger(__name__)

_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
_DICOM_STATUS = re.compile(r"0x[0-9A-Fa-f]{4}")
_WIRE_NAMES = {"dicomweb": "STOW-RS", "dimse": "C-STORE", "s3": "S3 PUT"}
_PROBE_NAMES = {"dicomweb": "QIDO-RS", "dimse": "C-ECHO", "s3": "S3 HeadBucket"}


class TracedSender:
    """Wraps a sender of one destination; see the module docstring."""

    def __init__(
        self,
        inner: Sender,
        *,
        destination: str,
        kind: str,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = inner.name
        self._inner = inner
        self._destination = destination
        self._wire = _WIRE_NAMES.get(kind, kind)
        self._probe_name = _PROBE_NAMES.get(kind, kind)
        self._telemetry = telemetry
        self._clock = clock

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        results: dict[int, SendResult] = {}
        for group in _by_trace(batch):
            for result in self._attempt(group):
                results[result.delivery_id] = result
        return [results[inst.delivery_id] for inst in batch if inst.delivery_id in results]

    def close(self) -> None:
        self._inner.close()

    def probe(self) -> ProbeResult | None:
        """The inner sender's idle probe, as a CLIENT span of its own (no instance, no trace)."""
        if getattr(self._inner, "probe", None) is None:
            return None
        with self._telemetry.span(
            f"{self._probe_name} idle probe",
            kind=SpanKind.CLIENT,
            attributes={DESTINATION: self._destination},
        ) as span:
            result = idle_probe(self._inner)
            if result is not None:
                set_attributes(span, {"gateway.probe": result.probe, OUTCOME: result.state})
                if result.state != "up":
                    mark_error(span, f"{result.status}: {result.detail}"[:300])
        return result

    def _attempt(self, group: Sequence[OutgoingInstance]) -> list[SendResult]:
        first = group[0]
        links = [
            link
            for link in (link_to(inst.trace_context) for inst in group[1:])
            if isinstance(link, Link)
        ]
        attributes: dict[str, AttributeValue | None] = {
            DESTINATION: self._destination,
            STUDY_UID: first.study_instance_uid,
            SOP_UID: [inst.sop_instance_uid for inst in group],
            INSTANCES: len(group),
            BYTES: sum(inst.size for inst in group),
        }
        with self._telemetry.span(
            f"{self._wire} send",
            kind=SpanKind.CLIENT,
            parent=context_from_traceparent(first.trace_context),
            links=links,
            attributes=attributes,
        ) as span:
            started = self._clock()
            results = self._inner.send(group)
            finished = self._clock()
            by_id = {result.delivery_id: result for result in results}
            worst = next(
                (r for r in results if r.outcome is not Outcome.DELIVERED),
                results[0] if results else None,
            )
            if worst is not None:
                set_attributes(span, _status_attributes(worst))
                if worst.outcome is not Outcome.DELIVERED:
                    mark_error(span, f"{worst.status}: {worst.detail}"[:300])
            for inst in group:
                result = by_id.get(inst.delivery_id)
                if result is not None:
                    self._record(inst, result, finished - started, finished)
        return results

    def _record(
        self, inst: OutgoingInstance, result: SendResult, seconds: float, finished: float
    ) -> None:
        metrics = self._telemetry.metrics
        metrics.attempt(self._destination, result.outcome.value, seconds)
        fields = {
            "event": f"delivery.{result.outcome.value}",
            DESTINATION: self._destination,
            STUDY_UID: inst.study_instance_uid,
            SOP_UID: inst.sop_instance_uid,
            "status": result.status,
            "duration_ms": round(seconds * 1000, 1),
        }
        if result.outcome is Outcome.DELIVERED:
            if inst.received_at is not None:
                metrics.delivered_after(self._destination, finished - float(inst.received_at))
            log.info(
                "delivered %s to %s: %s",
                inst.sop_instance_uid,
                self._destination,
                result.status,
                extra={"fields": fields},
            )
        else:
            log.warning(
                "delivery of %s to %s failed (%s): %s %s",
                inst.sop_instance_uid,
                self._destination,
                result.outcome.value,
                result.status,
                result.detail,
                extra={"fields": {**fields, "detail": result.detail}},
            )


def _by_trace(batch: Sequence[OutgoingInstance]) -> list[list[OutgoingInstance]]:
    """Split `batch` by trace id, keeping order; instances without a trace form one group."""
    groups: dict[str | None, list[OutgoingInstance]] = {}
    for inst in batch:
        groups.setdefault(trace_id_of(inst.trace_context), []).append(inst)
    return list(groups.values())


def _status_attributes(result: SendResult) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {OUTCOME: result.outcome.value}
    http = _HTTP_STATUS.search(result.status)
    if http:
        attributes[HTTP_STATUS_CODE] = int(http.group(1))
    dicom = _DICOM_STATUS.search(result.status)
    if dicom:
        attributes[DICOM_STATUS] = "0x" + dicom.group(0)[2:].upper()
    return attributes
