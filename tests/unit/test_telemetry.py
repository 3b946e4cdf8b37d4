"""Telemetry in process: span trees of ingest and delivery, propagation helpers, metrics, JSON
logs, the OTEL_* environment and the config switches."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import parse_settings
from gateway.db import open_database
from gateway.db.deliveries import Settlement
from gateway.db.instances import instance_by_sop
from gateway.exceptions import ConfigError, InvalidInputError
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.traced import TracedSender
from gateway.ingest import Ingestor
from gateway.logging_setup import JsonFormatter, TraceContextFilter
from gateway.metrics import GatewayMetrics
from gateway.otel_environment import _exporter_names
from gateway.spool.filesystem import FilesystemSpool
from gateway.telemetry import (
    Telemetry,
    context_from_traceparent,
    trace_id_of,
    traceparent_of,
)
from gateway.web.app import endpoints
from gateway.web.guard import PUBLIC
from tests.unit.test_ingest import SOURCE, make_file, settings


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return Telemetry(tracer_provider=provider)


def named(finished: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# -- ingest ---------------------------------------------------------------------------------------


def test_ingest_spans_nest_under_the_current_span_and_the_context_is_stored(
    tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ingestor = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db, telemetry=telemetry)
    with telemetry.span("DIMSE C-STORE") as door:
        result = ingestor.accept_file(make_file(ingestor.staging_dir), SOURCE)
    finished = spans.get_finished_spans()
    [ingest] = named(finished, "ingest")
    assert parent_id(ingest) == door.get_span_context().span_id
    for name in ("routing", "spool write", "database commit"):
        [child] = named(finished, name)
        assert parent_id(child) == ingest.context.span_id
    [routing] = named(finished, "routing")
    assert routing.attributes is not None and list(routing.attributes["gateway.rule"]) == ["ct"]
    assert ingest.attributes is not None
    assert ingest.attributes["dicom.sop_instance_uid"] == result.header.sop_instance_uid
    assert ingest.attributes["dicom.calling_ae"] == "CT1"
    assert ingest.attributes["gateway.bytes"] == result.size
    row = instance_by_sop(db, result.header.sop_instance_uid)
    assert row is not None
    stored = context_from_traceparent(row["trace_context"])
    assert stored is not None
    assert trace.get_current_span(stored).get_span_context().span_id == ingest.context.span_id


def test_a_group_commit_traces_each_instance_as_its_own_ingest(
    tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ingestor = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db, telemetry=telemetry)
    bad = ingestor.staging_dir / "bad.dcm"
    bad.write_bytes(b"not dicom")
    paths = [make_file(ingestor.staging_dir), bad, make_file(ingestor.staging_dir)]
    with telemetry.span("POST /studies") as request:
        outcomes = ingestor.accept_files(paths, SOURCE)
    finished = spans.get_finished_spans()
    ingests = sorted(named(finished, "ingest"), key=lambda span: span.start_time or 0)
    assert len(ingests) == 3
    assert {parent_id(span) for span in ingests} == {request.get_span_context().span_id}
    assert [span.status.status_code for span in ingests] == [
        trace.StatusCode.UNSET,
        trace.StatusCode.ERROR,
        trace.StatusCode.UNSET,
    ]
    for name, count in (("routing", 2), ("spool write", 2), ("database commit", 2)):
        children = named(finished, name)
        assert len(children) == count
        assert {parent_id(c) for c in children} == {
            ingests[0].context.span_id,
            ingests[2].context.span_id,
        }
    for outcome, span in zip(outcomes, ingests, strict=True):
        if isinstance(outcome, Exception):
            continue
        assert span.attributes is not None
        assert span.attributes["dicom.sop_instance_uid"] == outcome.header.sop_instance_uid
        row = instance_by_sop(db, outcome.header.sop_instance_uid)
        assert row is not None
        stored = context_from_traceparent(row["trace_context"])
        assert stored is not None
        assert trace.get_current_span(stored).get_span_context().span_id == span.context.span_id


def test_ingest_continues_an_explicit_traceparent(
    tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    s = settings(tmp_path)
    ingestor = Ingestor(
        s,
        FilesystemSpool(tmp_path / "spool"),
        open_database(s.storage.database),
        telemetry=telemetry,
    )
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ingestor.accept_file(make_file(ingestor.staging_dir), SOURCE, trace_context=upstream)
    [ingest] = named(spans.get_finished_spans(), "ingest")
    assert format(ingest.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id(ingest) == 0xB7AD6B7169203331


def test_a_refused_instance_marks_the_span_and_counts(
    tmp_path: Path, telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    s = settings(tmp_path)
    ingestor = Ingestor(
        s,
        FilesystemSpool(tmp_path / "spool"),
        open_database(s.storage.database),
        telemetry=telemetry,
    )
    bad = ingestor.staging_dir / "bad.dcm"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not dicom")
    with pytest.raises(InvalidInputError):
        ingestor.accept_file(bad, SOURCE)
    [ingest] = named(spans.get_finished_spans(), "ingest")
    assert ingest.status.status_code is trace.StatusCode.ERROR


def test_without_telemetry_ingest_stores_no_context(tmp_path: Path) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    ingestor = Ingestor(s, FilesystemSpool(tmp_path / "spool"), db)
    result = ingestor.accept_file(make_file(ingestor.staging_dir), SOURCE)
    row = instance_by_sop(db, result.header.sop_instance_uid)
    assert row is not None and row["trace_context"] is None


# -- propagation helpers --------------------------------------------------------------------------


def test_traceparent_round_trip(telemetry: Telemetry) -> None:
    with telemetry.span("x") as span:
        header = traceparent_of()
        assert header == traceparent_of(span)
    assert header is not None and header.startswith("00-")
    context = span.get_span_context()
    assert trace_id_of(header) == format(context.trace_id, "032x")
    for bad in (None, "", "garbage", "00-00000000000000000000000000000000-0000000000000000-01"):
        assert context_from_traceparent(bad) is None
        assert trace_id_of(bad) is None
    assert traceparent_of(trace.INVALID_SPAN) is None


# -- delivery -------------------------------------------------------------------------------------


class FakeSender:
    name = "cloud"

    def __init__(self, status: str = "HTTP 200", outcome: Outcome = Outcome.DELIVERED) -> None:
        self.batches: list[list[str]] = []
        self.current: list[int] = []
        self.status = status
        self.outcome = outcome

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        self.batches.append([i.sop_instance_uid for i in batch])
        self.current.append(trace.get_current_span().get_span_context().span_id)
        return [SendResult(i.delivery_id, self.outcome, self.status) for i in batch]

    def close(self) -> None:
        pass


def outgoing(delivery_id: int, trace_context: str | None) -> OutgoingInstance:
    return OutgoingInstance(
        delivery_id=delivery_id,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        sop_instance_uid=f"1.2.3.1.{delivery_id}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=100,
        open=lambda: io.BytesIO(b""),
        local_file=lambda: contextlib.nullcontext(Path("/dev/null")),
        trace_context=trace_context,
        received_at=time.time() - 5,
    )


def ingest_contexts(telemetry: Telemetry, count: int) -> list[str]:
    """`count` traceparents of ingest spans in one trace."""
    found = []
    with telemetry.span("association"):
        for _ in range(count):
            with telemetry.span("ingest") as span:
                header = traceparent_of(span)
                assert header is not None
                found.append(header)
    return found


def test_a_batch_is_sent_once_per_trace_with_the_persisted_parent(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    first = ingest_contexts(telemetry, 2)
    second = ingest_contexts(telemetry, 1)
    inner = FakeSender()
    sender = TracedSender(inner, destination="cloud", kind="dicomweb", telemetry=telemetry)
    batch = [
        outgoing(1, first[0]),
        outgoing(2, second[0]),
        outgoing(3, first[1]),
        outgoing(4, None),
    ]
    results = sender.send(batch)
    assert [r.delivery_id for r in results] == [1, 2, 3, 4]
    assert inner.batches == [["1.2.3.1.1", "1.2.3.1.3"], ["1.2.3.1.2"], ["1.2.3.1.4"]]
    sends = named(spans.get_finished_spans(), "STOW-RS send")
    assert len(sends) == 3
    by_parent = {parent_id(s): s for s in sends}
    one = by_parent[context_span_id(first[0])]
    assert one.kind is trace.SpanKind.CLIENT
    assert one.context.trace_id == context_trace_id(first[0])
    assert [link.context.span_id for link in one.links] == [context_span_id(first[1])]
    assert one.attributes is not None
    assert one.attributes["gateway.destination"] == "cloud"
    assert one.attributes["http.status_code"] == 200
    assert list(one.attributes["dicom.sop_instance_uid"]) == ["1.2.3.1.1", "1.2.3.1.3"]
    assert by_parent[context_span_id(second[0])].context.trace_id == context_trace_id(second[0])
    assert None in by_parent, "an instance without a stored context starts a new trace"
    assert inner.current[0] == one.context.span_id, "the send runs inside the attempt span"


def test_a_failed_attempt_is_an_error_span(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    inner = FakeSender(status="0xA700", outcome=Outcome.TRANSIENT)
    sender = TracedSender(inner, destination="pacs", kind="dimse", telemetry=telemetry)
    sender.send([outgoing(1, ingest_contexts(telemetry, 1)[0])])
    [send] = named(spans.get_finished_spans(), "C-STORE send")
    assert send.status.status_code is trace.StatusCode.ERROR
    assert send.attributes is not None and send.attributes["dicom.status"] == "0xA700"


def context_span_id(header: str) -> int:
    context = context_from_traceparent(header)
    assert context is not None
    return trace.get_current_span(context).get_span_context().span_id


def context_trace_id(header: str) -> int:
    context = context_from_traceparent(header)
    assert context is not None
    return trace.get_current_span(context).get_span_context().trace_id


# -- metrics --------------------------------------------------------------------------------------


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Telemetry]:
    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_TRACES_EXPORTER": "none"}
    )
    yield telemetry
    telemetry.shutdown()


def value(text: str, line_start: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_ingest_and_settlements_and_observe_the_queue(
    tmp_path: Path, metered: Telemetry
) -> None:
    s = settings(tmp_path)
    db = open_database(s.storage.database)
    spool = FilesystemSpool(tmp_path / "spool")
    metered.metrics.observe(db, spool, s.destinations)
    ingestor = Ingestor(s, spool, db, telemetry=metered)
    for _ in range(2):
        ingestor.accept_file(make_file(ingestor.staging_dir), SOURCE)
    now = time.time()
    metered.metrics.settled(
        "pacs",
        [
            Settlement(
                delivery_id=1,
                state="delivered",
                status="0x0000",
                detail="",
                started_at=now,
                finished_at=now,
            ),
            Settlement(
                delivery_id=2,
                state="pending",
                status="connect failed",
                detail="",
                started_at=now,
                finished_at=now,
                retry_at=now + 5,
            ),
            Settlement(
                delivery_id=3,
                state="dead",
                status="0xA900",
                detail="",
                started_at=now,
                finished_at=now,
            ),
        ],
    )
    text = metered.metrics.prometheus_text().decode()
    assert value(text, 'gateway_instances_received_total{calling_ae="CT1",door="dimse"}') == 2
    assert value(text, 'gateway_deliveries_delivered_total{destination="pacs"}') == 1
    assert value(text, 'gateway_deliveries_failed_total{destination="pacs"}') == 2
    assert value(text, 'gateway_deliveries_retried_total{destination="pacs"}') == 1
    assert value(text, 'gateway_deliveries_dead_total{destination="pacs"}') == 1
    for destination in ("cloud", "pacs"):
        assert (
            value(text, f'gateway_queue_depth{{destination="{destination}",state="pending"}}') == 2
        )
        assert value(text, f'gateway_queue_depth{{destination="{destination}",state="dead"}}') == 0
        age = f'gateway_queue_oldest_age_seconds{{destination="{destination}",state="pending"}}'
        assert value(text, age) >= 0
    assert value(text, "gateway_spool_disk_free_bytes") > 0


def test_disabled_metrics_render_nothing() -> None:
    metrics = GatewayMetrics.disabled()
    metrics.received("dimse", "CT1")
    assert metrics.prometheus_text() == b""


# -- environment ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, []),
    ],
)
def test_exporters_follow_the_standard_variables(
    environ: dict[str, str], expected: list[str]
) -> None:
    assert _exporter_names(environ, "TRACES") == expected


def test_sdk_disabled_means_no_spans_and_no_metrics() -> None:
    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_SDK_DISABLED": "true"}
    )
    assert telemetry.tracer_provider is None
    with telemetry.span("x") as span:
        assert not span.get_span_context().is_valid


def test_a_bad_exporter_setting_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with caplog.at_level(logging.ERROR, logger="gateway.telemetry"):
        telemetry = Telemetry.from_environment(
            service_version="test", instance_id="unit", environ=environ
        )
    telemetry.shutdown()
    assert "zipkin" in caplog.text and "http/json" in caplog.text


def test_a_collector_that_is_down_costs_no_ingest_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.harness import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    telemetry = Telemetry.from_environment(
        service_version="test",
        instance_id="unit",
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "10"},
    )
    started = time.monotonic()
    for _ in range(5000):  # more than the queue holds: the overflow is dropped
        with telemetry.span("ingest"):
            pass
    spent = time.monotonic() - started
    stopping = time.monotonic()
    telemetry.shutdown(timeout=2)
    assert spent < 10, spent
    assert time.monotonic() - stopping < 4


# -- logs -----------------------------------------------------------------------------------------


def test_json_log_lines_carry_trace_ids_and_no_phi_unless_allowed(telemetry: Telemetry) -> None:
    record = logging.LogRecord(
        "gateway.ingest", logging.INFO, __file__, 1, "stored %s", ("1.2",), None
    )
    record.fields = {
        "event": "instance.stored",
        "PatientID": "12345",
        "dicom.sop_instance_uid": "1.2",
    }
    with telemetry.span("ingest") as span:
        TraceContextFilter().filter(record)
    strict = json.loads(JsonFormatter(phi=False).format(record))
    assert strict["message"] == "stored 1.2"
    assert strict["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert strict["span_id"] == format(span.get_span_context().span_id, "016x")
    assert strict["event"] == "instance.stored"
    assert "PatientID" not in strict
    assert json.loads(JsonFormatter(phi=True).format(record))["PatientID"] == "12345"


# -- config and route table -----------------------------------------------------------------------


def test_logging_and_telemetry_config(tmp_path: Path) -> None:
    s = settings(
        tmp_path, logging={"format": "json", "phi": True}, telemetry={"metrics_public": True}
    )
    assert s.logging.format == "json" and s.logging.phi
    assert s.telemetry.metrics_public
    default = settings(tmp_path)
    assert default.logging.format == "text" and not default.logging.phi
    for bad in (
        {"logging": {"format": "xml"}},
        {"logging": {"phi": "yes"}},
        {"telemetry": {"exporter": "otlp"}},
    ):
        with pytest.raises(ConfigError):
            parse_settings({**bad}, base_dir=tmp_path)


def test_metrics_route_needs_admin_unless_configured_public(tmp_path: Path) -> None:
    def scope(table: list[Any]) -> str:
        [endpoint] = [e for e in table if e.path == "/metrics"]
        return str(endpoint.scope)

    assert scope(endpoints()) == "gateway.admin"
    assert scope(endpoints(settings(tmp_path))) == "gateway.admin"
    assert scope(endpoints(settings(tmp_path, telemetry={"metrics_public": True}))) == PUBLIC


def test_without_a_span_exporter_spans_keep_ids_but_record_only_sampled_upstreams() -> None:
    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_TRACES_EXPORTER": "none"}
    )
    try:
        with telemetry.span("DIMSE C-STORE") as root:
            assert not root.is_recording()  # nobody would see it: no cost
            assert root.get_span_context().is_valid  # but logs and traceparent get ids
            with telemetry.span("ingest") as child:
                # a child of an unsampled span is not even made: it carries the parent's ids
                assert child.get_span_context() == root.get_span_context()
        sampled = context_from_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        )
        with telemetry.span("ingest", parent=sampled) as joined:
            assert joined.is_recording()  # an upstream's sampled trace is carried on
            assert traceparent_of(joined).endswith("-01")  # type: ignore[union-attr]
    finally:
        telemetry.shutdown()
