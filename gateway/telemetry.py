"""OpenTelemetry for one gateway: providers from the OTEL_* environment, span keys, propagation.

A study's journey is one trace: the DIMSE association (or the inbound HTTP request, continuing
the sender's W3C `traceparent`) is its root, each instance's ingest a child, and every delivery
attempt, even one made hours later by another process, a child of that instance's ingest span.
That last link survives restarts because ingest persists the ingest span's `traceparent` with
the instance (`instances.trace_context`) and the delivery worker parents its span on it.

Configured like any OpenTelemetry service, by the standard environment variables:
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_EXPORTER` and
`OTEL_METRICS_EXPORTER` (`otlp`, `console`, `none`, comma-separated), `OTEL_EXPORTER_OTLP_*`
(endpoint, protocol `http/protobuf` or `grpc`, headers, timeout, ...), `OTEL_TRACES_SAMPLER`,
`OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_SDK_DISABLED` (read in
gateway/otel_environment.py). With no exporter variable and no OTLP endpoint set, nothing is
exported and spans record nothing, but they still carry trace ids, so logs show them,
`trace STUDY_UID` can name them and downstream gateways continue the trace.

Telemetry never stops the gateway: spans leave through a bounded batch queue on a background
thread (a down collector costs dropped spans, not ingest time), exports time out after 5 s
unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise, a broken exporter configuration is logged
and skipped, and shutdown waits at most a few seconds for a last flush.

Everything is per gateway and passed in explicitly (no global provider is installed), except
the httpx instrumentation: it patches httpx's transport process-wide, so outbound STOW-RS and
token requests made anywhere in the process carry `traceparent`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.otel_environment import (
    metric_readers,
    prometheus_reader,
    resource_for,
    sampler_for,
    span_exporters,
)

log = logging.getLogger(__name__)

# -- attribute keys (dashboards and queries rely on these exact names) ---------------------------
STUDY_UID = "dicom.study_instance_uid"
SERIES_UID = "dicom.series_instance_uid"
SOP_UID = "dicom.sop_instance_uid"
CALLING_AE = "dicom.calling_ae"
CALLED_AE = "dicom.called_ae"
PEER_ADDRESS = "net.peer.address"
DESTINATION = "gateway.destination"
RULE = "gateway.rule"
DICOM_STATUS = "dicom.status"
HTTP_STATUS_CODE = "http.status_code"
BYTES = "gateway.bytes"
DOOR = "gateway.door"
OUTCOME = "gateway.outcome"
INSTANCES = "gateway.instances"
# Query/retrieve and storage commitment services (gateway/dimse/tracing.py)
QR_MODEL = "dicom.qr.model"  # patient / study information model
QR_LEVEL = "dicom.qr.level"  # Query/Retrieve Level: PATIENT, STUDY, SERIES, IMAGE
MATCHES = "dicom.qr.matches"  # C-FIND answers sent; C-MOVE/C-GET instances matched
MOVE_DESTINATION = "dicom.move_destination"
COMPLETED = "dicom.suboperations.completed"
FAILED = "dicom.suboperations.failed"
WARNING = "dicom.suboperations.warning"
TRANSACTION_UID = "dicom.transaction_uid"
COMMITMENT_ITEMS = "dicom.commitment.items"  # Referenced SOP Sequence items
EVENT_TYPE = "dicom.commitment.event_type"  # 1 all committed, 2 failures exist
COMMITTED = "dicom.commitment.committed"
NOT_COMMITTED = "dicom.commitment.failed"
ATTEMPT = "gateway.attempt"
REASON = "gateway.reason"

_SHUTDOWN_SECONDS = 5.0
_TRACECONTEXT = TraceContextTextMapPropagator()
_HTTP_EXCLUDED = r"/healthz$,/readyz$,/metrics$"

AttributeValue = str | bool | int | float | Sequence[str]


class Telemetry:
    """Tracer and metrics of one gateway, plus what must be flushed at shutdown."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: Tracer = (
            tracer_provider.get_tracer("gateway")
            if tracer_provider is not None
            else trace.NoOpTracer()
        )
        self.metrics = metrics if metrics is not None else GatewayMetrics.disabled()
        self._instrumented_httpx = False
        self._unsampled_children_free = False

    @classmethod
    def disabled(cls) -> Telemetry:
        """No spans, no metrics: the default for components built without telemetry."""
        return cls()

    @classmethod
    def from_environment(
        cls,
        *,
        service_version: str,
        instance_id: str,
        environ: Mapping[str, str] | None = None,
    ) -> Telemetry:
        """Providers and exporters as the OTEL_* variables describe them.

        `environ` decides which exporters run; the OTLP exporters themselves read their
        endpoint, headers and certificates from the process environment, as the SDK does.
        """
        env = os.environ if environ is None else environ
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            log.info("OpenTelemetry disabled by OTEL_SDK_DISABLED")
            return cls()
        resource = resource_for(service_version, instance_id)
        # shutdown_on_exit=False: `shutdown()` bounds the final flush; an atexit flush would not.
        exporters = span_exporters(env)
        sampler = sampler_for(env, exporters)
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False, sampler=sampler)
        for exporter in exporters:
            # Bounded queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048) on a background thread: a slow
            # or absent collector drops spans instead of slowing ingest.
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        registry = CollectorRegistry(auto_describe=False)
        readers: list[MetricReader] = [prometheus_reader(registry)]
        readers.extend(metric_readers(env))
        meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
        metrics = GatewayMetrics(meter_provider.get_meter("gateway"), registry)
        telemetry = cls(
            tracer_provider=tracer_provider, meter_provider=meter_provider, metrics=metrics
        )
        # Under parentbased_always_off a child of an unsampled span is never sampled: hand out
        # the parent's context instead of asking the SDK for a span nobody will record.
        telemetry._unsampled_children_free = sampler is not None
        return telemetry

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Instrument httpx so outbound requests carry `traceparent` (once per process)."""
        if self.tracer_provider is None:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        instrumentor = HTTPXClientInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            return  # another gateway in this process did it (tests only)
        instrumentor.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self._instrumented_httpx = True

    def wrap_asgi(self, app: Any) -> Any:
        """The ASGI app behind OpenTelemetry's middleware: inbound `traceparent` is continued."""
        if self.tracer_provider is None:
            return app
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(
            app,
            excluded_urls=_HTTP_EXCLUDED,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            exclude_spans=["receive", "send"],  # one span per request, not per body chunk
        )

    def shutdown(self, timeout: float = _SHUTDOWN_SECONDS) -> None:
        """Flush and stop exporters, waiting at most `timeout` seconds in all."""
        if self._instrumented_httpx:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor().uninstrument()
            self._instrumented_httpx = False
        providers: list[Callable[[], object]] = []
        if self.tracer_provider is not None:
            providers.append(self.tracer_provider.shutdown)
        if self.meter_provider is not None:
            meter_provider = self.meter_provider
            providers.append(lambda: meter_provider.shutdown(timeout_millis=timeout * 1000))

        def run(stop: Callable[[], object]) -> None:
            try:
                stop()
            except Exception:
                log.exception("telemetry shutdown failed")

        # A collector that is down must not hold the process: traces and metrics flush side by
        # side in daemon threads, and whatever is still unsent after `timeout` is dropped.
        stoppers = [
            threading.Thread(target=run, args=(stop,), name="telemetry-shutdown", daemon=True)
            for stop in providers
        ]
        deadline = time.monotonic() + timeout
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        if any(stopper.is_alive() for stopper in stoppers):
            log.warning("telemetry: exporters did not flush within %.0f s; data dropped", timeout)

    # -- spans -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        links: Sequence[trace.Link] = (),
        attributes: Mapping[str, AttributeValue | None] | None = None,
    ) -> Iterator[Span]:
        """A current span; an exception marks it as an error and propagates unchanged."""
        if self.tracer_provider is None or self._unsampled_child(parent):
            # Telemetry off (or a child that cannot be sampled): what the no-op tracer would
            # hand out (the parent's context in a span that records nothing), without its
            # context switches.
            span = _not_recording(parent)
            if parent is None:
                yield span
            else:
                with trace.use_span(span, end_on_exit=False):
                    yield span
            return
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            links=list(links),
            attributes=clean(attributes or {}),
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span

    def start_span(
        self,
        name: str,
        *,
        parent: Context | None = None,
        attributes: Mapping[str, AttributeValue | None] | None = None,
    ) -> Span:
        """A span that is not made current and must be finished with `end_span`.

        For work whose spans overlap rather than nest: a STOW-RS request's instances are each
        traced from their arrival until the one commit that makes them all durable.
        """
        if self.tracer_provider is None or self._unsampled_child(parent):
            return _not_recording(parent)
        return self.tracer.start_span(
            name, context=parent, attributes=clean(attributes) if attributes else None
        )

    def _unsampled_child(self, parent: Context | None) -> bool:
        if not self._unsampled_children_free:
            return False
        context = trace.get_current_span(parent).get_span_context()
        return context.is_valid and not context.trace_flags.sampled


def _not_recording(parent: Context | None) -> Span:
    current = trace.get_current_span(parent)
    if isinstance(current, trace.NonRecordingSpan):
        return current
    return trace.NonRecordingSpan(current.get_span_context())


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End a span from `Telemetry.start_span`, marked as `span()` marks an escaping error."""
    if error is not None and span.is_recording():
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def set_attributes(span: Span, attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set the attributes that have a value (None means "not known here")."""
    if span.is_recording():  # a no-op span ignores them anyway; skip building the dict
        span.set_attributes(clean(attributes))


def clean(attributes: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {key: value for key, value in attributes.items() if value is not None}


def mark_error(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


# -- propagation -----------------------------------------------------------------------------------


def traceparent_of(span: Span | None = None) -> str | None:
    """The W3C `traceparent` of `span` (default: the current span), or None if there is none."""
    target = span if span is not None else trace.get_current_span()
    context = target.get_span_context()
    if not context.is_valid:
        return None
    carrier: dict[str, str] = {}
    _TRACECONTEXT.inject(carrier, context=trace.set_span_in_context(target))
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """A parent context from a persisted `traceparent`; None if absent or malformed."""
    if not traceparent:
        return None
    context = _TRACECONTEXT.extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def link_to(traceparent: str | None) -> trace.Link | None:
    """A span link to the span a persisted `traceparent` names."""
    context = context_from_traceparent(traceparent)
    if context is None:
        return None
    return trace.Link(trace.get_current_span(context).get_span_context())


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id inside a `traceparent`, as trace backends show it."""
    context = context_from_traceparent(traceparent)
    if context is None:
        return None
    return format(trace.get_current_span(context).get_span_context().trace_id, "032x")


# -- configuration from the environment ------------------------------------------------------------
