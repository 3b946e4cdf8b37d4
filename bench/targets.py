"""The targets of issue 7, as data, and whether a run's medians meet them.

A ratio target compares the gateway's median with Orthanc's median *from the same run*; an
absolute target looks at the gateway's median alone. A target whose scenario did not run, or
whose numbers are missing (a system skipped or failed), is "not measured", never "met".
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["TARGETS", "Target", "evaluate"]

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True, slots=True)
class Target:
    scenario: str
    text: str
    metric: str
    op: Literal[">=", "<="]
    threshold: float
    kind: Literal["ratio", "absolute"] = "ratio"
    versus: str = "orthanc"


TARGETS: tuple[Target, ...] = (
    Target("cstore-ct", "C-STORE CT >= 1.5x Orthanc (MB/s)", "mb_per_s", ">=", 1.5),
    Target("cstore-multiframe", "C-STORE 210 MB >= 2.5x Orthanc (MB/s)", "mb_per_s", ">=", 2.5),
    Target(
        "cstore-multiframe",
        "C-STORE 210 MB: gateway peak RSS <= 80 MB",
        "peak_rss_mb",
        "<=",
        80,
        "absolute",
    ),
    Target(
        "cstore-tiny", "C-STORE 10 KB >= 1.0x Orthanc (instances/s)", "instances_per_s", ">=", 1.0
    ),
    Target("stow-ct", "STOW-RS CT >= 1.5x Orthanc (MB/s)", "mb_per_s", ">=", 1.5),
    Target(
        "stow-tiny", "STOW-RS 10 KB >= 1.0x Orthanc (instances/s)", "instances_per_s", ">=", 1.0
    ),
    Target("stow-multiframe", "STOW-RS 210 MB >= 3x Orthanc (MB/s)", "mb_per_s", ">=", 3.0),
    Target(
        "stow-multiframe",
        "STOW-RS 210 MB: gateway peak RSS <= 100 MB",
        "peak_rss_mb",
        "<=",
        100,
        "absolute",
    ),
    Target(
        "bridge",
        "Bridge >= 0.9x Orthanc's own STOW-RS rate (instances/s)",
        "instances_per_s",
        ">=",
        0.9,
    ),
    Target(
        "qido-2k",
        "QIDO instance level <= 0.2x Orthanc latency (p50), 2 k",
        "instance_p50_ms",
        "<=",
        0.2,
    ),
    Target(
        "qido-100k",
        "QIDO instance level <= 0.2x Orthanc latency (p50), 100 k",
        "instance_p50_ms",
        "<=",
        0.2,
    ),
    Target(
        "qido-100k",
        "QIDO study level p99 <= 5 ms at 100 k",
        "study_p99_ms",
        "<=",
        5.0,
        "absolute",
    ),
    Target("wado", "WADO-RS study >= 1.0x Orthanc (MB/s)", "study_mb_per_s", ">=", 1.0),
    Target("wado", "WADO-RS 210 MB instance >= 2x Orthanc (MB/s)", "instance_mb_per_s", ">=", 2.0),
    Target(
        "wado",
        "WADO-RS 210 MB instance: gateway peak RSS <= 100 MB",
        "instance_peak_rss_mb",
        "<=",
        100,
        "absolute",
    ),
)


def evaluate(scenarios: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: the measured value, the threshold and ``met`` (True/False/None)."""
    by_name = {s["name"]: s for s in scenarios}
    rows = []
    for target in TARGETS:
        value = _value(by_name.get(target.scenario), target)
        met = None if value is None else bool(_OPS[target.op](value, target.threshold))
        rows.append(
            {
                "scenario": target.scenario,
                "target": target.text,
                "kind": target.kind,
                "metric": target.metric,
                "op": target.op,
                "threshold": target.threshold,
                "value": value,
                "met": met,
            }
        )
    return rows


def _value(scenario: Mapping[str, Any] | None, target: Target) -> float | None:
    if scenario is None:
        return None
    if target.kind == "ratio":
        value = scenario.get("ratios", {}).get(target.versus, {}).get(target.metric)
    else:
        value = scenario.get("median", {}).get("gateway", {}).get(target.metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)
