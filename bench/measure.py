"""Clocks, summary statistics and process memory, the few numbers every scenario reports.

Peak memory is the kernel's high-water mark of the resident set (``VmHWM`` in
``/proc/PID/status``). Writing ``5`` to ``/proc/PID/clear_refs`` resets it (Linux >= 4.0, same
user), so a long-running server can be measured per request; where that is not allowed the
mark covers the process's whole life, which only overstates the peak.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MB",
    "Stopwatch",
    "cpu_seconds",
    "median",
    "peak_rss_mb",
    "percentile",
    "reset_peak_rss",
    "rss_mb",
    "stopwatch",
]

MB = 1_000_000
"""Throughput and sizes are in decimal megabytes (MB/s = 10^6 bytes per second)."""


@dataclass
class Stopwatch:
    started: float = 0.0
    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """``with stopwatch() as sw: ...`` then ``sw.seconds`` (monotonic, high resolution)."""
    watch = Stopwatch(started=time.perf_counter())
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - watch.started


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (``VmHWM``) of ``pid`` in MB (10^6 bytes)."""
    return _status_kb(pid, "VmHWM") * 1024 / MB


def rss_mb(pid: int) -> float:
    """Current resident set size (``VmRSS``) of ``pid`` in MB (10^6 bytes)."""
    return _status_kb(pid, "VmRSS") * 1024 / MB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime 14, stime 15 (1-based): indexes 11, 12 here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS; False if the kernel refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
