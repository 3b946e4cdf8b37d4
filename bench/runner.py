"""Run scenarios with interleaved repetitions; keep medians and ratios; write JSON, print a table.

Interleaving: within a scenario, repetition *r* runs the systems in an order rotated by *r*
(gateway, orthanc, storescp; then orthanc, storescp, gateway; ...), so drift in the machine's
load or in the page cache does not always favour the same system. Medians are over the
repetitions that succeeded; ratios are gateway / other for every metric both measured.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bench.datasets import Profile, Store
from bench.machine import (
    inode_reuse_delay,
    let_freed_inodes_age,
    load_average,
    machine_info,
    versions,
)
from bench.measure import median
from bench.scenarios import Context, Scenario
from bench.systems import EndpointUnavailable
from bench.targets import evaluate

__all__ = ["format_table", "run_all", "summarise"]

SCHEMA = 1


def run_all(
    scenarios: Sequence[Scenario],
    *,
    profile: Profile,
    repeat: int,
    data_root: Path,
    work_root: Path,
    command: str,
    output: Path | None = None,
    out: TextIO = sys.stdout,
    settle_seconds: float | None = None,
) -> dict[str, Any]:
    """Run ``scenarios`` and return the whole result document (see :data:`SCHEMA`).

    With ``output`` the document is also written after every scenario, so an interrupted run
    keeps what it measured.
    """
    store = Store(data_root, profile)
    work_root.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "profile": profile.name,
        "repeat": repeat,
        "machine": machine_info(work_root),
        "load_average": {"start": load_average()},
        "versions": versions(),
        "data_root": str(data_root),
        "scenarios": [],
    }
    if settle_seconds is None:
        settle_seconds = inode_reuse_delay(work_root)
    document["settle_seconds"] = settle_seconds
    # Whatever ran before us may have deleted files too.
    let_freed_inodes_age(settle_seconds, "before the first run (see Context.empty_trash)")
    started = time.monotonic()
    print(table_header(), file=out, flush=True)
    for index, scenario in enumerate(scenarios):
        settle = settle_seconds if index < len(scenarios) - 1 else 0.0
        result = _run_scenario(scenario, profile, store, work_root, repeat, settle)
        document["scenarios"].append(result)
        print(format_table([result], header=False), file=out, flush=True)
        document["load_average"]["end"] = load_average()
        document["elapsed_s"] = round(time.monotonic() - started, 1)
        document["targets"] = evaluate(document["scenarios"])
        if output is not None:
            write_json(document, output)
    return document


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _run_scenario(
    scenario: Scenario,
    profile: Profile,
    store: Store,
    work_root: Path,
    repeat: int,
    settle_seconds: float,
) -> dict[str, Any]:
    ctx = Context(store=store, profile=profile, work_root=work_root / scenario.name)
    systems = scenario.systems
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    notes: dict[str, list[str]] = {s: [] for s in systems}
    skipped: set[str] = set()
    failed: dict[str, int] = {s: 0 for s in systems}
    started = time.monotonic()
    workload: dict[str, Any] = {}
    with ctx.stack:
        try:
            _log(f"{scenario.name}: setting up")
            workload = scenario.workload(ctx)
            scenario.setup(ctx)
        except Exception as exc:
            _log(f"{scenario.name}: setup failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            for system in systems:
                notes[system].append(f"setup failed: {type(exc).__name__}: {exc}")
                failed[system] += 1
            repeat = 0
        for rep in range(repeat):
            shift = rep % len(systems)
            for system in (*systems[shift:], *systems[:shift]):
                if system in skipped:
                    continue
                _log(f"{scenario.name}: repetition {rep + 1}/{repeat}, {system}")
                try:
                    metrics = scenario.run(ctx, system)
                except EndpointUnavailable as exc:
                    skipped.add(system)
                    notes[system].append(f"skipped: {exc}")
                    _log(f"{scenario.name}: {system} skipped: {exc}")
                except Exception as exc:
                    failed[system] += 1
                    notes[system].append(
                        f"repetition {rep + 1} failed: {type(exc).__name__}: {exc}"
                    )
                    _log(f"{scenario.name}: {system} failed: {exc}")
                    traceback.print_exc(file=sys.stderr)
                else:
                    runs[system].append({k: round(v, 4) for k, v in metrics.items()})
        try:
            scenario.teardown(ctx)
        except Exception as exc:  # teardown trouble must not lose the numbers
            _log(f"{scenario.name}: teardown failed: {exc}")
    ctx.empty_trash(settle_seconds)  # after ctx.stack set the long-lived servers' folders aside
    status = {
        s: "skipped"
        if s in skipped
        else "failed"
        if failed[s] and not runs[s]
        else "partial"
        if failed[s]
        else "ok"
        for s in systems
    }
    return summarise(
        {
            "name": scenario.name,
            "title": scenario.title,
            "workload": workload,
            "systems": list(systems),
            "metrics": [asdict(m) for m in scenario.metrics],
            "runs": runs,
            "status": status,
            "notes": {s: n for s, n in notes.items() if n},
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    )


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Add ``median`` (per system) and ``ratios`` (gateway / other) to a scenario result."""
    medians: dict[str, dict[str, float]] = {}
    for system, runs in result["runs"].items():
        keys = sorted({k for run in runs for k in run})
        medians[system] = {k: round(median([r[k] for r in runs if k in r]), 4) for k in keys}
    ratios: dict[str, dict[str, float]] = {}
    gateway = medians.get("gateway", {})
    for system, values in medians.items():
        if system == "gateway":
            continue
        ratios[system] = {
            k: round(gateway[k] / v, 4)
            for k, v in values.items()
            if k in gateway and v and not math.isnan(v) and not math.isnan(gateway[k])
        }
    result["median"] = medians
    result["ratios"] = ratios
    return result


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if value and abs(value) < 0.01:
        return f"{value:.4f}"
    return f"{value:.2f}"


def table_header() -> str:
    header = f"{'scenario':<18} {'metric':<32} {'gateway':>9} {'orthanc':>9} {'storescp':>9}"
    header += f" {'gw/orthanc':>10} {'gw/storescp':>11}"
    return header + "\n" + "-" * len(header)


def format_table(scenarios: Sequence[dict[str, Any]], *, header: bool = True) -> str:
    """Medians per metric and system, then gateway/other ratios, as aligned text."""
    lines = [table_header()] if header else []
    for result in scenarios:
        medians = result.get("median", {})
        ratios = result.get("ratios", {})
        for metric in result["metrics"]:
            key = metric["key"]
            if not any(key in medians.get(s, {}) for s in result["systems"]):
                continue
            cells = [_fmt(medians.get(s, {}).get(key)) for s in ("gateway", "orthanc", "storescp")]
            ratio_cells = [
                _fmt(ratios.get(s, {}).get(key)) + ("x" if key in ratios.get(s, {}) else "")
                for s in ("orthanc", "storescp")
            ]
            label = f"{metric['label']} ({metric['unit']})"
            lines.append(
                f"{result['name']:<18} {label:<32} {cells[0]:>9} {cells[1]:>9} {cells[2]:>9}"
                f" {ratio_cells[0]:>10} {ratio_cells[1]:>11}"
            )
        for system, status in result.get("status", {}).items():
            if status != "ok":
                detail = "; ".join(result.get("notes", {}).get(system, []))
                lines.append(f"{result['name']:<18} {system} {status}: {detail[:300]}")
    return "\n".join(lines)


def format_targets(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["", f"{'target':<62} {'value':>8}  result"]
    for row in rows:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        suffix = "x" if row["kind"] == "ratio" and row["value"] is not None else ""
        lines.append(f"{row['target']:<62} {_fmt(row['value']) + suffix:>8}  {verdict}")
    return "\n".join(lines)


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def command_line(argv: Sequence[str]) -> str:
    return shlex.join([Path(sys.executable).name, "-m", "bench", *argv])
