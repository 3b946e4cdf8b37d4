"""Observability end to end: one trace per study across two gateways, traces that survive a
restart, /metrics that follows the queue, and ingest that does not care whether the collector
is up. Gateways run as real processes exporting OTLP/HTTP to a receiver in this test."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.e2e.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.harness import (
    LOOPBACK,
    GatewayProcess,
    StoreSCP,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.dcmtk

SOP = "dicom.sop_instance_uid"


def otel_env(service: str, endpoint: str) -> dict[str, str]:
    """Export traces and metrics to `endpoint` quickly (short batch delay and interval)."""
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }


def gateway_config(
    folder: Path,
    *,
    ae_title: str,
    destinations: Mapping[str, Mapping[str, object]],
    forward: list[str] | None,
    http: bool = True,
    extra: Mapping[str, object] | None = None,
) -> Path:
    return write_config(
        folder / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port() if http else None,
        spool=folder / "spool",
        database=folder / "gateway.db",
        destinations=destinations,
        routes=[{"name": "all", "forward": forward}] if forward else [],
        extra={"delivery": {"poll_interval": 0.05}, **dict(extra or {})},
        ae_title=ae_title,
    )


def pacs(scp: StoreSCP, **retry: float) -> dict[str, object]:
    destination: dict[str, object] = {
        "type": "dimse",
        "ae_title": scp.aet,
        "host": LOOPBACK,
        "port": scp.port,
    }
    if retry:
        destination["retry"] = dict(retry)
    return destination


def token(gateway: GatewayProcess, scope: str) -> str:
    result = gateway.run_cli("token", "--config", str(gateway.config_path), "--scope", scope)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sop_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def carries(span: ReceivedSpan, sop: str) -> bool:
    value = span.attributes.get(SOP)
    return value == sop or (isinstance(value, list) and sop in value)


@dataclass
class Journey:
    """The spans of one instance, by (service, name)."""

    spans: list[ReceivedSpan]

    def one(self, service: str, name: str) -> ReceivedSpan:
        found = [s for s in self.spans if s.service == service and s.name == name]
        assert len(found) == 1, f"{service} {name}: {len(found)} span(s)"
        return found[0]


def journey(spans: list[ReceivedSpan], sop: str) -> Journey:
    return Journey([s for s in spans if carries(s, sop)])


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> set[str]:
    return {s.name for s in spans if s.parent_span_id == parent.span_id}


# -- two gateways, one trace -----------------------------------------------------------------------


def test_two_gateways_in_a_chain_share_one_trace_per_instance(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    require_binary("storescu")
    files = make_ct_series(tmp_path / "ct", 3, rows=32, cols=32)
    uids = sop_uids(files)
    with OtlpReceiver() as otlp:
        b_config = gateway_config(
            tmp_path / "b",
            ae_title="GATEWAYB",
            destinations={"pacs": pacs(storescp)},
            forward=["pacs"],
        )
        b = GatewayProcess(b_config, tmp_path / "b", env=otel_env("gateway-b", otlp.endpoint))
        a_config = gateway_config(
            tmp_path / "a",
            ae_title="GATEWAYA",
            destinations={
                "cloud": {
                    "type": "dicomweb",
                    "url": b.http_url,
                    "auth": {"type": "bearer", "token_env": "GATEWAY_B_TOKEN"},
                }
            },
            forward=["cloud"],
        )
        env = {
            **otel_env("gateway-a", otlp.endpoint),
            "GATEWAY_B_TOKEN": token(b, "dicomweb.write"),
        }
        a = GatewayProcess(a_config, tmp_path / "a", env=env)
        with b, a:
            sent = storescu(files, a.dimse_port, called_aet=a.ae_title, calling_aet="CT1")
            assert sent.returncode == 0, sent.stderr
            wait_until(
                lambda: storescp.received_sop_instance_uids() == uids,
                timeout=60,
                message="every instance at storescp through A and B",
            )
            # Each gateway exports on its own schedule: wait for the last span of each hop,
            # A's STOW-RS send as well as B's C-STORE send, before reading the journeys.
            spans = otlp.wait_for(
                lambda got: all(
                    any(s.service == service and s.name == name and carries(s, u) for s in got)
                    for u in uids
                    for service, name in (
                        ("gateway-a", "STOW-RS send"),
                        ("gateway-b", "C-STORE send"),
                    )
                )
            )
            trace = a.run_cli("trace", "--config", str(a.config_path), files_study(files))
        assert otlp.metric_requests > 0, "metrics were exported over OTLP too"

    index = by_id(spans)
    trace_ids = set()
    for uid in uids:
        path = journey(spans, uid)
        a_store = path.one("gateway-a", "DIMSE C-STORE")
        a_ingest = path.one("gateway-a", "ingest")
        a_send = path.one("gateway-a", "STOW-RS send")
        b_ingest = path.one("gateway-b", "ingest")
        b_send = path.one("gateway-b", "C-STORE send")
        members = [a_store, a_ingest, a_send, b_ingest, b_send]
        assert len({s.trace_id for s in members}) == 1, "one trace id across both gateways"
        trace_ids.add(a_store.trace_id)

        # Gateway A: association -> C-STORE -> ingest -> routing/spool/db; send under ingest.
        association = index[a_store.parent_span_id or ""]
        assert association.name == "DIMSE association" and association.kind == "SERVER"
        assert association.parent_span_id is None, "DIMSE starts the trace"
        assert association.attributes["dicom.calling_ae"] == "CT1"
        assert association.attributes["dicom.called_ae"] == "GATEWAYA"
        assert association.attributes["net.peer.address"] == LOOPBACK
        assert a_store.kind == "SERVER"
        assert a_store.attributes["dicom.status"] == "0x0000"
        assert a_store.attributes["gateway.bytes"] > 0
        assert a_store.attributes["dicom.study_instance_uid"] == files_study(files)
        assert a_ingest.parent_span_id == a_store.span_id
        assert {"routing", "spool write", "database commit"} <= children(spans, a_ingest)
        routing = next(
            s for s in spans if s.parent_span_id == a_ingest.span_id and s.name == "routing"
        )
        assert routing.attributes["gateway.rule"] == ["all"]
        send_parent = index[a_send.parent_span_id or ""]
        assert send_parent.name == "ingest" and send_parent.service == "gateway-a"
        assert a_send.kind == "CLIENT"
        assert a_send.attributes["gateway.destination"] == "cloud"
        assert a_send.attributes["http.status_code"] == 200

        # The HTTP request (httpx instrumentation) carries traceparent to B's server span.
        [http_client] = [s for s in spans if s.parent_span_id == a_send.span_id]
        assert http_client.kind == "CLIENT" and http_client.service == "gateway-a"
        [b_server] = [s for s in spans if s.parent_span_id == http_client.span_id]
        assert b_server.kind == "SERVER" and b_server.service == "gateway-b"
        assert b_ingest.parent_span_id == b_server.span_id
        assert {"routing", "spool write", "database commit"} <= children(spans, b_ingest)
        b_send_parent = index[b_send.parent_span_id or ""]
        assert b_send_parent.name == "ingest" and b_send_parent.service == "gateway-b"
        assert b_send.attributes["gateway.destination"] == "pacs"
        assert b_send.attributes["dicom.status"] == "0x0000"
    assert len(trace_ids) == 1, "one association, one trace"
    assert trace.returncode == 0
    assert f"trace id(s): {trace_ids.pop()}" in trace.stdout


def files_study(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


# -- a retry after a restart stays in the trace ----------------------------------------------------


def test_delivery_retried_after_restart_lands_in_the_original_trace(tmp_path: Path) -> None:
    require_binary("storescu")
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "storescp" / "received")
    scp.start()
    scp.stop()  # the destination is down; its port is kept for the restart
    files = make_ct_series(tmp_path / "ct", 2, rows=32, cols=32)
    uids = sop_uids(files)
    try:
        with OtlpReceiver() as otlp:
            config = gateway_config(
                tmp_path / "gw",
                ae_title="GATEWAY",
                destinations={"pacs": pacs(scp, initial_backoff=0.2, max_backoff=0.5)},
                forward=["pacs"],
                http=False,
            )
            gateway = GatewayProcess(config, tmp_path / "gw", env=otel_env("gw", otlp.endpoint))
            with gateway:
                sent = storescu(files, gateway.dimse_port, called_aet="GATEWAY", calling_aet="CT1")
                assert sent.returncode == 0, sent.stderr
                otlp.wait_for(
                    lambda got: any(s.name == "C-STORE send" and s.status_code == 2 for s in got),
                    timeout=30,
                )
            scp.start()
            gateway.start()  # a new process; the pending deliveries are taken up again
            try:
                wait_until(
                    lambda: scp.received_sop_instance_uids() == uids,
                    timeout=60,
                    message="delivered after the restart",
                )
                spans = otlp.wait_for(
                    lambda got: all(
                        any(
                            s.name == "C-STORE send" and s.status_code != 2 and carries(s, u)
                            for s in got
                        )
                        for u in uids
                    )
                )
            finally:
                gateway.stop()
    finally:
        scp.stop()
    index = by_id(spans)
    for uid in uids:
        ingest = journey(spans, uid).one("gw", "ingest")
        sends = [s for s in journey(spans, uid).spans if s.name == "C-STORE send"]
        failed = [s for s in sends if s.status_code == 2]
        delivered = [s for s in sends if s.status_code != 2]
        assert failed and delivered
        for send in sends:
            assert send.trace_id == ingest.trace_id, "every attempt is in the ingest's trace"
            parent = index[send.parent_span_id or ""]
            assert parent.name == "ingest" and parent.trace_id == ingest.trace_id
        assert delivered[-1].attributes["dicom.status"] == "0x0000"


# -- /metrics --------------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample whose labels include `labels`."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


@pytest.fixture
def down_pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "storescp" / "received")
    scp.start()
    scp.stop()
    try:
        yield scp
    finally:
        scp.stop()


def test_metrics_follow_a_send(tmp_path: Path, down_pacs: StoreSCP) -> None:
    require_binary("storescu")
    files = make_ct_series(tmp_path / "ct", 3, rows=32, cols=32)
    config = gateway_config(
        tmp_path / "gw",
        ae_title="GATEWAY",
        destinations={"pacs": pacs(down_pacs, initial_backoff=0.2, max_backoff=0.5)},
        forward=["pacs"],
    )
    gateway = GatewayProcess(config, tmp_path / "gw", env={"OTEL_TRACES_EXPORTER": "none"})
    with gateway:
        url = f"{gateway.http_url}/metrics"
        admin = {"Authorization": f"Bearer {token(gateway, 'gateway.admin')}"}
        reader = {"Authorization": f"Bearer {token(gateway, 'dicomweb.read')}"}
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=reader).status_code == 403

        def scrape() -> str:
            response = httpx.get(url, headers=admin)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

        before = scrape()
        assert sample(before, "gateway_queue_depth", destination="pacs", state="pending") == 0
        assert sample(before, "gateway_spool_disk_free_bytes") > 0

        sent = storescu(files, gateway.dimse_port, called_aet="GATEWAY", calling_aet="CT1")
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: (
                (sample(scrape(), "gateway_deliveries_retried_total", destination="pacs") or 0) >= 3
            ),
            timeout=30,
            message="failed attempts counted",
        )
        down = scrape()
        assert sample(down, "gateway_instances_received_total", door="dimse", calling_ae="CT1") == 3
        queued = sum(
            sample(down, "gateway_queue_depth", destination="pacs", state=state) or 0
            for state in ("pending", "leased")
        )
        assert queued == 3
        assert (
            sample(down, "gateway_queue_oldest_age_seconds", destination="pacs", state="pending")
            > 0
        )
        assert sample(down, "gateway_deliveries_failed_total", destination="pacs") >= 3
        assert sample(down, "gateway_deliveries_delivered_total", destination="pacs") is None

        down_pacs.start()
        wait_until(
            lambda: sample(scrape(), "gateway_deliveries_delivered_total", destination="pacs") == 3,
            timeout=30,
            message="delivered counted",
        )
        after = scrape()
        for state in ("pending", "leased", "dead"):
            assert sample(after, "gateway_queue_depth", destination="pacs", state=state) == 0
        assert sample(after, "gateway_deliveries_dead_total", destination="pacs") is None
        assert sample(after, "gateway_delivery_latency_seconds_count", destination="pacs") == 3
        assert (
            sample(
                after,
                "gateway_delivery_attempt_duration_seconds_count",
                destination="pacs",
                outcome="delivered",
            )
            == 3
        )


# -- a collector that is down ---------------------------------------------------------------------


@pytest.mark.slow
def test_collector_down_does_not_slow_or_fail_ingest(tmp_path: Path) -> None:
    require_binary("storescu")
    count = 400  # more spans than the batch queue holds (2048): the overflow is dropped
    files = make_ct_series(tmp_path / "ct", count, rows=32, cols=32)
    closed = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    timings: dict[str, float] = {}
    for label, env in (
        ("exporter none", {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}),
        ("collector down", otel_env("gw", closed)),
    ):
        folder = tmp_path / label.replace(" ", "-")
        # No destination: every instance is held, so only ingest is measured.
        config = gateway_config(
            folder, ae_title="GATEWAY", destinations={}, forward=None, http=False
        )
        gateway = GatewayProcess(config, folder, env=env)
        with gateway:
            started = time.monotonic()
            sent = storescu(files, gateway.dimse_port, called_aet="GATEWAY", calling_aet="CT1")
            timings[label] = time.monotonic() - started
            assert sent.returncode == 0, sent.stderr
            stopping = time.monotonic()
        timings[f"{label}: stop"] = time.monotonic() - stopping
        assert gateway.returncode == 0
        listed = gateway.run_cli("trace", "--config", str(config), files_study(files))
        assert listed.stdout.startswith(f"study {files_study(files)}: {count} instance(s)")
    print("ingest timings (s):", {k: round(v, 2) for k, v in timings.items()})
    assert timings["collector down"] < 3 * timings["exporter none"] + 10
    assert timings["collector down: stop"] < 12
