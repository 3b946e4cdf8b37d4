"""C-STORE ingest with durable acknowledgements, one association, DCMTK ``storescu`` as sender.

The same ``storescu`` run (the harness wrapper: each file proposed in its own transfer syntax,
``TCP_NODELAY=1``) sends the whole set to each system in one association. Time is the wall time
of that run, so association set-up and release are included, equally for all three. Every
system is a fresh process with empty storage; its peak RSS is ``VmHWM`` reset just before the
transfer, its CPU time (user + system, all threads, from ``/proc/PID/stat``) is taken across
the transfer and divided by the instance count. Afterwards the system must hold every
instance, or the run does not count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.datasets import DataSet
from bench.measure import MB, cpu_seconds, peak_rss_mb, reset_peak_rss, rss_mb, stopwatch
from bench.scenarios.base import BenchError, Context, Metric, Scenario
from bench.systems import (
    Running,
    gateway_config,
    running_gateway,
    running_orthanc,
    running_storescp,
)
from tests.harness import storescu

__all__ = ["CStoreIngest", "dimse_system", "send_cstore"]

CALLING_AET = "BENCHSCU"

INGEST_METRICS = (
    Metric("mb_per_s", "throughput", "MB/s", "higher"),
    Metric("instances_per_s", "instances/s", "1/s", "higher"),
    Metric("cpu_ms_per_instance", "server CPU per instance", "ms", "lower"),
    Metric("peak_rss_mb", "peak RSS", "MB", "lower"),
    Metric("idle_rss_mb", "RSS before", "MB", "lower"),
)


@contextlib.contextmanager
def dimse_system(system: str, workdir: Path) -> Iterator[Running]:
    """A fresh gateway, Orthanc or storescp with empty storage in ``workdir``."""
    if system == "gateway":
        with running_gateway(gateway_config(workdir)) as running:
            yield running
    elif system == "orthanc":
        with running_orthanc(workdir) as running:
            yield running
    elif system == "storescp":
        with running_storescp(workdir) as running:
            yield running
    else:
        raise ValueError(system)


def send_cstore(files: tuple[Path, ...], target: Running, *, timeout: float = 3600.0) -> float:
    """C-STORE ``files`` to ``target`` in one association; seconds taken. Raises on failure."""
    with stopwatch() as watch:
        done = storescu(
            list(files),
            target.dimse_port,
            called_aet=target.aet,
            calling_aet=CALLING_AET,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise BenchError(
            f"storescu to {target.name} failed ({done.returncode}): {done.stderr[-600:]}"
        )
    return watch.seconds


class CStoreIngest(Scenario):
    systems = ("gateway", "orthanc", "storescp")
    metrics = INGEST_METRICS

    def __init__(self, name: str, title: str, data: Callable[[Context], DataSet]) -> None:
        self.name = name
        self.title = title
        self._data = data

    def workload(self, ctx: Context) -> dict[str, Any]:
        data = self._data(ctx)
        return {
            "instances": data.count,
            "total_mb": round(data.total_bytes / MB, 1),
            "mean_instance_kb": round(data.total_bytes / max(data.count, 1) / 1000, 1),
            "sender": "DCMTK storescu, one association",
        }

    def setup(self, ctx: Context) -> None:
        self._data(ctx)  # generate once, outside any timing

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        data = self._data(ctx)
        with ctx.scratch(f"{self.name}-{system}") as work, dimse_system(system, work) as target:
            idle = rss_mb(target.pid)
            reset_peak_rss(target.pid)
            cpu = cpu_seconds(target.pid)
            seconds = send_cstore(data.files, target)
            cpu = cpu_seconds(target.pid) - cpu
            peak = peak_rss_mb(target.pid)
            stored = target.count_instances()
        return ingest_figures(data, system, "C-STORE", stored, seconds, cpu, peak, idle)


def ingest_figures(
    data: DataSet,
    system: str,
    door: str,
    stored: int,
    seconds: float,
    cpu: float,
    peak: float,
    idle: float,
) -> dict[str, float]:
    """The ingest metrics of one run, after checking every instance was stored."""
    if stored != data.count:
        raise BenchError(f"{system} holds {stored} instances after {door}, expected {data.count}")
    return {
        "seconds": seconds,
        "mb_per_s": data.total_bytes / MB / seconds,
        "instances_per_s": data.count / seconds,
        "cpu_ms_per_instance": cpu * 1000 / data.count,
        "peak_rss_mb": peak,
        "idle_rss_mb": idle,
    }


def scenarios() -> list[Scenario]:
    return [
        CStoreIngest(
            "cstore-ct", "C-STORE ingest, CT 0.5 MB instances", lambda ctx: ctx.store.ct()
        ),
        CStoreIngest(
            "cstore-multiframe",
            "C-STORE ingest, ~210 MB multi-frame objects",
            lambda ctx: ctx.store.multiframe(),
        ),
        CStoreIngest(
            "cstore-tiny", "C-STORE ingest, 10 KB instances", lambda ctx: ctx.store.tiny()
        ),
    ]
