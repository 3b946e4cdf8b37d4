"""The bridge: C-STORE into the gateway, STOW-RS out to Orthanc, end to end.

``gateway``: a fresh Orthanc is the gateway's only destination (``type: dicomweb``, the
config's defaults: one worker, batches of up to 100 instances / 64 MB) and one rule forwards
everything. storescu sends the CT set in one association; the run ends when every delivery is
settled. From the gateway's own database: *sustained rate* = instances / (last ``settled_at`` -
first ``received_at``), and per instance *receipt -> delivered* = ``settled_at - received_at``
(p50, p99). A dead delivery, or one Orthanc does not hold, fails the run.

CPU per instance is counted for every process of the chain (the sender, the gateway, Orthanc
as the archive), and *cores busy* is their sum over the run's wall time: on a machine with few
cores it shows whether the chain as a whole ran out of CPU, which no single ratio can.

``orthanc``: the yardstick, Orthanc's own STOW-RS rate for the same instances, posted by the
harness client in requests of 100 (the gateway's batch size) to a fresh Orthanc.
"""

from __future__ import annotations

import contextlib
import resource
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from bench.measure import MB, cpu_seconds, percentile
from bench.scenarios.base import BenchError, Context, Metric, Scenario
from bench.scenarios.cstore import send_cstore
from bench.scenarios.stow import stow_all
from bench.systems import gateway_config, running_gateway, running_orthanc

__all__ = ["Bridge"]

BATCH = 100  # DicomwebDestination.max_batch_instances default
SETTLE_TIMEOUT = 1800.0


class Bridge(Scenario):
    name = "bridge"
    title = "Bridge C-STORE -> gateway -> STOW-RS -> Orthanc"
    systems = ("gateway", "orthanc")
    metrics = (
        Metric("instances_per_s", "sustained instances/s", "1/s", "higher"),
        Metric("latency_p50_ms", "receipt->delivered p50", "ms", "lower"),
        Metric("latency_p99_ms", "receipt->delivered p99", "ms", "lower"),
        Metric("ingest_instances_per_s", "C-STORE leg instances/s", "1/s", "higher"),
        Metric("sender_cpu_ms", "sender CPU per instance", "ms", "lower"),
        Metric("gateway_cpu_ms", "gateway CPU per instance", "ms", "lower"),
        Metric("archive_cpu_ms", "archive (Orthanc) CPU per instance", "ms", "lower"),
        Metric("cores_busy", "cores busy (all processes)", "cores", "lower"),
    )

    def workload(self, ctx: Context) -> dict[str, Any]:
        data = ctx.store.ct()
        return {
            "instances": data.count,
            "total_mb": round(data.total_bytes / MB, 1),
            "gateway": "storescu -> gateway -> STOW-RS (1 worker, batches <= 100) -> Orthanc",
            "orthanc": f"Orthanc's own STOW-RS, {BATCH} instances per request",
        }

    def setup(self, ctx: Context) -> None:
        ctx.store.ct()

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        if system == "gateway":
            return self._bridge(ctx)
        return self._orthanc_stow(ctx)

    def _orthanc_stow(self, ctx: Context) -> dict[str, float]:
        data = ctx.store.ct()
        with ctx.scratch("bridge-orthanc") as work, running_orthanc(work) as orthanc:
            with httpx.Client(timeout=3600) as client:
                sender, archive = _own_cpu(), cpu_seconds(orthanc.pid)
                seconds, _ = stow_all(client, orthanc, data.files, BATCH)
                sender, archive = _own_cpu() - sender, cpu_seconds(orthanc.pid) - archive
            stored = orthanc.count_instances()
        if stored != data.count:
            raise BenchError(f"Orthanc holds {stored} instances, expected {data.count}")
        return {
            "seconds": seconds,
            "instances_per_s": data.count / seconds,
            "sender_cpu_ms": sender * 1000 / data.count,
            "archive_cpu_ms": archive * 1000 / data.count,
            "cores_busy": (sender + archive) / seconds,
        }

    def _bridge(self, ctx: Context) -> dict[str, float]:
        data = ctx.store.ct()
        with (
            ctx.scratch("bridge-gateway") as work,
            running_orthanc(work / "orthanc") as orthanc,
        ):
            config = gateway_config(
                work / "gateway",
                destinations={"archive": {"type": "dicomweb", "url": orthanc.dicomweb}},
                routes=[{"name": "everything", "forward": ["archive"]}],
            )
            with running_gateway(config) as gateway:
                assert gateway.db_path is not None
                before = (_children_cpu(), cpu_seconds(gateway.pid), cpu_seconds(orthanc.pid))
                ingest_seconds = send_cstore(data.files, gateway)
                rows = _wait_settled(gateway.db_path, data.count)
                after = (_children_cpu(), cpu_seconds(gateway.pid), cpu_seconds(orthanc.pid))
            held = orthanc.count_instances()
        sender, gateway_cpu, archive = (b - a for a, b in zip(before, after, strict=True))
        if held != data.count:
            raise BenchError(
                f"Orthanc holds {held} instances after the bridge, expected {data.count}"
            )
        received = [r for r, _ in rows]
        settled = [s for _, s in rows]
        latencies = [(s - r) * 1000 for r, s in rows]
        window = max(settled) - min(received)
        return {
            "seconds": window,
            "instances_per_s": data.count / window,
            "latency_p50_ms": percentile(latencies, 0.50),
            "latency_p99_ms": percentile(latencies, 0.99),
            "ingest_instances_per_s": data.count / ingest_seconds,
            "sender_cpu_ms": sender * 1000 / data.count,
            "gateway_cpu_ms": gateway_cpu * 1000 / data.count,
            "archive_cpu_ms": archive * 1000 / data.count,
            # The wait for settlement polls; it ends within 50 ms of the last delivery.
            "cores_busy": (sender + gateway_cpu + archive) / window,
        }


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (storescu, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu() -> float:
    """CPU seconds of this process (the harness's STOW-RS client)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_settled(db_path: Path, expected: int) -> list[tuple[float, float]]:
    """(received_at, settled_at) of every delivered instance once all ``expected`` are settled."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            states = dict(
                db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
            )
            if states.get("dead"):
                detail = db.execute(
                    "SELECT last_detail FROM deliveries WHERE state = 'dead' LIMIT 1"
                ).fetchone()
                raise BenchError(f"{states['dead']} deliveries dead: {detail[0] if detail else ''}")
            if states.get("delivered", 0) >= expected:
                return [
                    (float(r), float(s))
                    for r, s in db.execute(
                        "SELECT i.received_at, d.settled_at FROM deliveries d "
                        "JOIN instances i ON i.id = d.instance_id WHERE d.state = 'delivered'"
                    ).fetchall()
                ]
        if time.monotonic() > deadline:
            raise BenchError(f"deliveries not settled within {SETTLE_TIMEOUT:.0f}s: {states}")
        time.sleep(0.05)
