"""What the standard OTEL_* environment asks for: span exporters, metric readers, sampler, resource.

Kept apart from gateway/telemetry.py, which builds a gateway's providers from these and holds
the span helpers every module uses. A broken exporter configuration is logged and skipped,
never fatal; exports time out after 5 s unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

SERVICE_NAME_DEFAULT = "dicom-gateway"
_EXPORT_TIMEOUT_SECONDS = 5.0
_GRPC_HINT = "OTLP over gRPC needs `pip install opentelemetry-exporter-otlp-proto-grpc`"


def sampler_for(env: Mapping[str, str], exporters: Sequence[SpanExporter]) -> Sampler | None:
    """Without a span exporter, record only what an upstream sampled; None: the SDK's choice.

    Unexported spans are pure cost (about a tenth of a 10 KB C-STORE's CPU, issue 7), but trace
    ids still matter without an exporter: log lines, `dicom-gateway trace` and the traceparent
    sent downstream carry them. `parentbased_always_off` keeps all of that (a root span gets
    ids, not a recording), and still records and passes on a trace an upstream sampled, so a
    gateway without an exporter in the middle of a chain does not cut the chain.
    `OTEL_TRACES_SAMPLER` set explicitly wins.
    """
    if exporters or env.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    return ParentBased(ALWAYS_OFF)


def resource_for(service_version: str, instance_id: str) -> Resource:
    resource = Resource.create(
        {"service.version": service_version, "service.instance.id": instance_id}
    )
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME_DEFAULT}))
    return resource


def _exporter_names(env: Mapping[str, str], signal: str) -> list[str]:
    """`OTEL_<signal>_EXPORTER`; unset means otlp if an OTLP endpoint is set, else none."""
    raw = env.get(f"OTEL_{signal}_EXPORTER")
    if raw is None or not raw.strip():
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    return [] if "none" in names else names


def _protocol(env: Mapping[str, str], signal: str) -> str:
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def _timeout(env: Mapping[str, str], signal: str) -> float | None:
    """None lets the exporter read OTEL_EXPORTER_OTLP_*TIMEOUT; else our short default."""
    if env.get(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT"):
        return None
    return _EXPORT_TIMEOUT_SECONDS


def span_exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _exporter_names(env, "TRACES"):
        try:
            exporter = _span_exporter(name, env)
        except Exception as exc:  # a bad exporter setting must not stop the gateway
            log.error("telemetry: trace exporter %r not started: %s", name, exc)
            continue
        if exporter is not None:
            exporters.append(exporter)
    return exporters


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.error(
            "telemetry: OTEL_TRACES_EXPORTER %r is not supported; use otlp, console, none", name
        )
        return None
    protocol = _protocol(env, "TRACES")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(timeout=_timeout(env, "TRACES"))
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            log.error(
                "telemetry: %s; traces are not exported (or set "
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)",
                _GRPC_HINT,
            )
            return None
        exporter: SpanExporter = GrpcSpanExporter(timeout=_timeout(env, "TRACES"))
        return exporter
    log.error(
        "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %r is not supported; use http/protobuf or grpc",
        protocol,
    )
    return None


def metric_readers(env: Mapping[str, str]) -> list[MetricReader]:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    readers: list[MetricReader] = []
    for name in _exporter_names(env, "METRICS"):
        exporter: MetricExporter | None = None
        try:
            if name == "prometheus":
                continue  # /metrics is always served; nothing to add
            if name == "console":
                exporter = ConsoleMetricExporter()
            elif name == "otlp":
                exporter = _otlp_metric_exporter(env)
            else:
                log.error(
                    "telemetry: OTEL_METRICS_EXPORTER %r is not supported; "
                    "use otlp, console, prometheus, none",
                    name,
                )
        except Exception as exc:
            log.error("telemetry: metric exporter %r not started: %s", name, exc)
        if exporter is not None:
            readers.append(PeriodicExportingMetricReader(exporter))
    return readers


def _otlp_metric_exporter(env: Mapping[str, str]) -> Any:
    protocol = _protocol(env, "METRICS")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(timeout=_timeout(env, "METRICS"))
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter as GrpcMetricExporter,
            )
        except ImportError:
            log.error("telemetry: %s; metrics are not exported over OTLP", _GRPC_HINT)
            return None
        return GrpcMetricExporter(timeout=_timeout(env, "METRICS"))
    log.error("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL %r is not supported", protocol)
    return None


def prometheus_reader(registry: CollectorRegistry) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    # No target_info or scope labels: the scrape config names the job and instance, and the
    # scope is always "gateway".
    return PrometheusMetricReader(
        disable_target_info=True, scope_info_enabled=False, registry=registry
    )
