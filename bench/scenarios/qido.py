"""QIDO-RS latency at study, series and instance level, with 2 k or 100 k instances indexed.

Both systems hold the same instances: one target study (one series of ``qido_series`` = 300
tiny instances, patient ``QIDO^TARGET``) plus filler studies of 50 tiny instances, one patient
each, up to the total. Seeding happens once per scenario, outside any timing:

* the gateway through its real ingest use case in-process (header parse, routing, spool put
  with fsync, SQLite outbox commit per instance; :func:`bench.systems.seed_gateway_in_process`),
  before its process starts;
* Orthanc through its REST API (``POST /instances``, four client threads).

Queries (``Accept: application/dicom+json``, one keep-alive connection, one after another):

* study:    ``GET /studies?PatientID=<target patient>``            -> 1 study
* series:   ``GET /studies/{study}/series``                        -> 1 series
* instance: ``GET /studies/{study}/series/{series}/instances?limit=300`` -> 300 instances
  (the gateway pages at 100 without ``limit``)

One untimed query per level checks the answer's size; then ``queries`` timed ones give p50 and
p99 (with 100 queries the p99 is close to the maximum).
"""

from __future__ import annotations

import concurrent.futures
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pydicom

from bench.measure import percentile
from bench.scenarios.base import BenchError, Context, Metric, Scenario
from bench.scenarios.stow import check_available
from bench.systems import (
    EndpointUnavailable,
    Running,
    gateway_config,
    running_gateway,
    running_orthanc,
    seed_gateway_in_process,
)

__all__ = ["Qido"]

LEVELS = ("study", "series", "instance")
UPLOAD_THREADS = 4


def identity(path: Path) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "sop": str(ds.SOPInstanceUID),
        "patient_id": str(ds.PatientID),
    }


class Qido(Scenario):
    systems = ("gateway", "orthanc")
    metrics = tuple(
        Metric(f"{level}_{q}_ms", f"{level} level {q}", "ms", "lower")
        for level in LEVELS
        for q in ("p50", "p99")
    )

    def __init__(self, name: str, total: str) -> None:
        self.name = name
        self.title = f"QIDO-RS latency, {'2 k' if total == 'qido_small' else '100 k'} indexed"
        self._total_attr = total
        self._targets: dict[str, Running] = {}

    def _total(self, ctx: Context) -> int:
        return int(getattr(ctx.profile, self._total_attr))

    def _files(self, ctx: Context) -> tuple[list[Path], list[Path]]:
        series = ctx.store.qido_series()
        fill = ctx.store.qido_fill(self._total(ctx))
        return list(series.files), list(fill.files)

    def workload(self, ctx: Context) -> dict[str, Any]:
        series, fill = self._files(ctx)
        return {
            "indexed_instances": len(series) + len(fill),
            "target_series_instances": len(series),
            "queries_per_level": ctx.profile.queries,
            "seeding": "gateway: in-process ingest API; Orthanc: REST POST /instances",
        }

    def setup(self, ctx: Context) -> None:
        series, fill = self._files(ctx)
        files = series + fill
        self._ids = identity(series[0])
        ctx.log(f"{self.name}: seeding the gateway with {len(files)} instances (in-process ingest)")
        config = gateway_config(ctx.persistent(f"{self.name}-gateway"))
        seed_gateway_in_process(
            config, files, progress=lambda n: ctx.log(f"{self.name}: gateway seeded {n}")
        )
        self._targets["gateway"] = ctx.stack.enter_context(running_gateway(config))
        ctx.log(f"{self.name}: seeding Orthanc with {len(files)} instances (REST upload)")
        orthanc = ctx.stack.enter_context(running_orthanc(ctx.persistent(f"{self.name}-orthanc")))
        _upload(orthanc, files, ctx)
        self._targets["orthanc"] = orthanc
        for name, target in self._targets.items():
            held = target.count_instances()
            if held != len(files):
                raise BenchError(
                    f"{name} holds {held} instances after seeding, expected {len(files)}"
                )

    def teardown(self, ctx: Context) -> None:
        self._targets.clear()

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        target = self._targets[system]
        if target.unavailable:
            raise EndpointUnavailable(target.unavailable)
        ids = self._ids
        root = target.dicomweb
        queries = {
            "study": (f"{root}/studies", {"PatientID": ids["patient_id"]}, 1),
            "series": (f"{root}/studies/{ids['study']}/series", {}, 1),
            # limit: the gateway pages at 100 by default (PS3.18 lets a server limit).
            "instance": (
                f"{root}/studies/{ids['study']}/series/{ids['series']}/instances",
                {"limit": str(ctx.profile.qido_series)},
                ctx.profile.qido_series,
            ),
        }
        headers = {
            **target.headers,
            "Accept": "application/dicom+json",
            "Accept-Encoding": "identity",  # measure the query, not gzip
        }
        result: dict[str, float] = {}
        with httpx.Client(headers=headers, timeout=120) as client:
            for level, (url, params, expected) in queries.items():
                samples = _latencies(client, target, url, params, expected, ctx.profile.queries)
                result[f"{level}_p50_ms"] = percentile(samples, 0.50)
                result[f"{level}_p99_ms"] = percentile(samples, 0.99)
        return result


def _latencies(
    client: httpx.Client,
    target: Running,
    url: str,
    params: dict[str, str],
    expected: int,
    count: int,
) -> list[float]:
    response = client.get(url, params=params)
    check_available(target, response, f"GET {url.split('/', 3)[-1]}")
    if response.status_code != 200 or len(response.json()) != expected:
        raise BenchError(
            f"{target.name} QIDO {url} answered {response.status_code} with "
            f"{len(response.json()) if response.status_code == 200 else '?'} results, "
            f"expected {expected}"
        )
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(url, params=params)
        response.read()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchError(f"{target.name} QIDO {url} answered {response.status_code}")
    return samples


def _upload(orthanc: Running, files: list[Path], ctx: Context) -> None:
    server = orthanc.harness
    done = 0
    with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(server.upload, files):
            done += 1
            if done % 5000 == 0:
                ctx.log(f"orthanc seeded {done}")


def scenarios() -> list[Scenario]:
    return [Qido("qido-2k", "qido_small"), Qido("qido-100k", "qido_large")]
