"""WADO-RS retrieval: a whole CT study and one ~210 MB instance, streamed by the client.

Both systems get the same objects once, over C-STORE from storescu (the CT set and the first
multi-frame object), outside any timing, followed by one untimed QIDO-RS request so that
first-request work (imports, key loading) is not counted. Each repetition then retrieves

* the study: ``GET /studies/{study}`` with
  ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``;
* the instance: ``GET /studies/{study}/series/{series}/instances/{sop}``, same Accept.

The client reads the body in 1 MiB chunks and throws it away. *Time to first byte* is from
sending the request to the first body chunk; MB/s is body bytes over the whole exchange. Peak
RSS is the server's ``VmHWM``, reset just before each request. A body shorter than the stored
files fails the run.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.measure import MB, peak_rss_mb, reset_peak_rss
from bench.scenarios.base import BenchError, Context, Metric, Scenario
from bench.scenarios.cstore import send_cstore
from bench.scenarios.qido import identity
from bench.scenarios.stow import check_available
from bench.systems import (
    EndpointUnavailable,
    Running,
    gateway_config,
    running_gateway,
    running_orthanc,
)

__all__ = ["Wado"]

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 1024 * 1024


class Wado(Scenario):
    name = "wado"
    title = "WADO-RS retrieve: CT study and one ~210 MB instance"
    systems = ("gateway", "orthanc")
    metrics = tuple(
        metric
        for case in ("study", "instance")
        for metric in (
            Metric(f"{case}_mb_per_s", f"{case} throughput", "MB/s", "higher"),
            Metric(f"{case}_ttfb_ms", f"{case} time to first byte", "ms", "lower"),
            Metric(f"{case}_peak_rss_mb", f"{case} peak RSS", "MB", "lower"),
        )
    )

    def __init__(self) -> None:
        self._targets: dict[str, Running] = {}

    def workload(self, ctx: Context) -> dict[str, Any]:
        ct = ctx.store.ct()
        big = ctx.store.multiframe().files[0]
        return {
            "study_instances": ct.count,
            "study_mb": round(ct.total_bytes / MB, 1),
            "instance_mb": round(big.stat().st_size / MB, 1),
            "accept": ACCEPT,
            "seeding": "storescu C-STORE into both",
        }

    def setup(self, ctx: Context) -> None:
        ct = ctx.store.ct()
        big = ctx.store.multiframe().files[0]
        files = (*ct.files, big)
        self._study = identity(ct.files[0])
        self._big = identity(big)
        self._sizes = {"study": ct.total_bytes, "instance": big.stat().st_size}
        gateway = ctx.stack.enter_context(
            running_gateway(gateway_config(ctx.persistent("wado-gateway")))
        )
        orthanc = ctx.stack.enter_context(running_orthanc(ctx.persistent("wado-orthanc")))
        for target in (gateway, orthanc):
            send_cstore(files, target)
            if target.count_instances() != len(files):
                raise BenchError(f"{target.name} did not store every WADO-RS test object")
            # One untimed authenticated request: first-request work (imports, key loading,
            # caches) is start-up cost, not retrieval, for either server.
            with httpx.Client(headers=target.headers, timeout=60) as client:
                client.get(f"{target.dicomweb}/studies", params={"limit": "1"})
        self._targets = {"gateway": gateway, "orthanc": orthanc}

    def teardown(self, ctx: Context) -> None:
        self._targets.clear()

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        target = self._targets[system]
        if target.unavailable:
            raise EndpointUnavailable(target.unavailable)
        study, big = self._study, self._big
        urls = {
            "study": f"{target.dicomweb}/studies/{study['study']}",
            "instance": (
                f"{target.dicomweb}/studies/{big['study']}/series/{big['series']}"
                f"/instances/{big['sop']}"
            ),
        }
        result: dict[str, float] = {}
        # identity: Orthanc would otherwise gzip the body for httpx's default Accept-Encoding.
        headers = {**target.headers, "Accept": ACCEPT, "Accept-Encoding": "identity"}
        with httpx.Client(headers=headers, timeout=3600) as client:
            for case, url in urls.items():
                reset_peak_rss(target.pid)
                received, ttfb, seconds = _retrieve(client, target, url)
                result[f"{case}_peak_rss_mb"] = peak_rss_mb(target.pid)
                if received < self._sizes[case]:
                    raise BenchError(
                        f"{target.name} WADO-RS {case}: {received} bytes, stored files hold "
                        f"{self._sizes[case]}"
                    )
                result[f"{case}_mb_per_s"] = received / MB / seconds
                result[f"{case}_ttfb_ms"] = ttfb * 1000
                result[f"{case}_seconds"] = seconds
        return result


def _retrieve(client: httpx.Client, target: Running, url: str) -> tuple[int, float, float]:
    """(body bytes, seconds to the first body chunk, seconds in all) for one GET."""
    received = 0
    first = 0.0
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        if response.status_code != 200:
            response.read()
            check_available(target, response, f"GET {url.split('/', 3)[-1][:40]}...")
            raise BenchError(
                f"{target.name} WADO-RS answered {response.status_code}: {response.text[:200]!r}"
            )
        for chunk in response.iter_raw(CHUNK):
            if not received:
                first = time.perf_counter() - started
            received += len(chunk)
    return received, first, time.perf_counter() - started


def scenarios() -> list[Scenario]:
    return [Wado()]
