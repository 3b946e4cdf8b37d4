"""STOW-RS ingest: ``POST /studies`` with N instances per multipart/related request.

The client is the harness's :func:`tests.harness.stow` (one httpx connection, kept alive; the
body streamed from disk in 1 MiB chunks with a random boundary), so the client holds no object
in memory and costs the same for both servers. Requests go one after another; time covers them
all. Every response must be 200 with every instance in ReferencedSOPSequence and no
FailedSOPSequence. Server CPU and peak RSS are taken as for C-STORE. The gateway is asked at
``{http}/studies`` with a bearer token, Orthanc at ``/dicom-web/studies``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.datasets import DataSet
from bench.measure import MB, cpu_seconds, peak_rss_mb, reset_peak_rss, rss_mb, stopwatch
from bench.scenarios.base import BenchError, Context, Scenario
from bench.scenarios.cstore import INGEST_METRICS, ingest_figures
from bench.systems import (
    EndpointUnavailable,
    Running,
    gateway_config,
    running_gateway,
    running_orthanc,
)
from tests.harness import stow

__all__ = ["StowIngest", "check_available", "stow_all", "web_system"]

UNAVAILABLE_STATUSES = (404, 405, 501)


@contextlib.contextmanager
def web_system(system: str, workdir: Path) -> Iterator[Running]:
    """A fresh gateway or Orthanc with empty storage in ``workdir``."""
    if system == "gateway":
        with running_gateway(gateway_config(workdir)) as running:
            yield running
    elif system == "orthanc":
        with running_orthanc(workdir) as running:
            yield running
    else:
        raise ValueError(system)


def check_available(target: Running, response: httpx.Response, what: str) -> None:
    """Turn "the endpoint is not there yet" into :class:`EndpointUnavailable`."""
    if response.status_code in UNAVAILABLE_STATUSES:
        raise EndpointUnavailable(
            f"{target.name} {what} answered HTTP {response.status_code}: {response.text[:200]!r}"
        )


def stow_all(
    client: httpx.Client, target: Running, files: Sequence[Path], batch: int
) -> tuple[float, int]:
    """STOW ``files`` in requests of ``batch``; returns (seconds, requests)."""
    if target.unavailable:
        raise EndpointUnavailable(target.unavailable)
    url = f"{target.dicomweb}/studies"
    requests = 0
    with stopwatch() as watch:
        for start in range(0, len(files), batch):
            part = files[start : start + batch]
            response = stow(client, url, part, headers=target.headers, timeout=3600)
            requests += 1
            check_available(target, response, "POST /studies")
            _check_stored(target, response, len(part))
    return watch.seconds, requests


def _check_stored(target: Running, response: httpx.Response, expected: int) -> None:
    if response.status_code != 200:
        raise BenchError(
            f"{target.name} STOW-RS answered {response.status_code}: {response.text[:300]!r}"
        )
    body = response.json()
    failed = (body.get("00081198") or {}).get("Value") or []
    stored = (body.get("00081199") or {}).get("Value") or []
    if failed or len(stored) != expected:
        raise BenchError(
            f"{target.name} STOW-RS stored {len(stored)} of {expected}, {len(failed)} failed"
        )


class StowIngest(Scenario):
    systems = ("gateway", "orthanc")
    metrics = INGEST_METRICS

    def __init__(
        self,
        name: str,
        title: str,
        data: Callable[[Context], DataSet],
        batch: Callable[[Context], int],
    ) -> None:
        self.name = name
        self.title = title
        self._data = data
        self._batch = batch

    def workload(self, ctx: Context) -> dict[str, Any]:
        data = self._data(ctx)
        return {
            "instances": data.count,
            "total_mb": round(data.total_bytes / MB, 1),
            "instances_per_request": self._batch(ctx),
            "client": "httpx, one keep-alive connection, body streamed from disk",
        }

    def setup(self, ctx: Context) -> None:
        self._data(ctx)

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        data = self._data(ctx)
        with ctx.scratch(f"{self.name}-{system}") as work, web_system(system, work) as target:
            idle = rss_mb(target.pid)
            reset_peak_rss(target.pid)
            cpu = cpu_seconds(target.pid)
            with httpx.Client(timeout=3600) as client:
                seconds, requests = stow_all(client, target, data.files, self._batch(ctx))
            cpu = cpu_seconds(target.pid) - cpu
            peak = peak_rss_mb(target.pid)
            stored = target.count_instances()
        figures = ingest_figures(data, system, "STOW-RS", stored, seconds, cpu, peak, idle)
        return {**figures, "requests": requests}


def scenarios() -> list[Scenario]:
    return [
        StowIngest(
            "stow-ct",
            "STOW-RS ingest, CT 0.5 MB, 50 per request",
            lambda ctx: ctx.store.ct(),
            lambda ctx: ctx.profile.stow_batch,
        ),
        StowIngest(
            "stow-tiny",
            "STOW-RS ingest, 10 KB, 50 per request",
            lambda ctx: ctx.store.tiny(),
            lambda ctx: ctx.profile.stow_batch,
        ),
        StowIngest(
            "stow-multiframe",
            "STOW-RS ingest, ~210 MB, one per request",
            lambda ctx: ctx.store.multiframe(),
            lambda ctx: 1,
        ),
    ]
