"""What would removing one cost buy? C-STORE ingest with a cost switched off, vs the baseline.

    python -m bench.whatif [--scenario cstore-ct|cstore-tiny] [--repeat 3] [--quick]
                           [--variants baseline,nofsync,sqlite-normal,...]

The profile (``bench.profile``) says where samples land; this says what the throughput would
be without a cost, which is what a proposal is worth. Each variant is a fresh gateway started
with switches from ``bench/whatif_patches/sitecustomize.py`` (``nofsync``, ``sqlite-normal``,
``nodirsync``, ``a+b`` combines them), run interleaved with the baseline (``--repeat``
rounds, order rotated), medians reported as a ratio to the baseline. The switches remove
durability on purpose and exist only to price it; nothing in ``gateway/`` changes. The variant
``orthanc`` is Orthanc itself in the same rounds, and ``nodirsync+sqlite-normal`` gives the
gateway the durability Orthanc's acknowledgement has, so the two rows compare like with like.

Two variants add a neighbour instead of removing a cost: ``cpu-neighbour`` (a process spinning
on one core) and ``flush-neighbour`` (a process writing 512 KiB and ``fdatasync``-ing it in a
loop, in the same filesystem). They are the bridge scenario's Orthanc in miniature, and show
what sharing the machine's cores and disk flushes costs the C-STORE leg::

    python -m bench.whatif --scenario cstore-ct --variants \\
        baseline,cpu-neighbour,flush-neighbour,orthanc,orthanc+cpu-neighbour,orthanc+flush-neighbour

Writes ``bench/results/whatif-<scenario>.json``, rendered by ``python -m bench.report``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.datasets import Store, default_data_root, profile_named
from bench.machine import inode_reuse_delay, let_freed_inodes_age, load_average, versions
from bench.measure import MB, cpu_seconds, median
from bench.scenarios.base import BenchError, Context
from bench.scenarios.cstore import send_cstore
from bench.systems import Running, gateway_config, running_gateway, running_orthanc
from tests.harness.gateway import REPO_ROOT

__all__ = ["PATCHES", "main"]

PATCHES = Path(__file__).resolve().parent / "whatif_patches"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = (
    "baseline",
    "nofsync",
    "sqlite-normal",
    "nodirsync+sqlite-normal",
    "orthanc",
)
REFERENCE = "orthanc"  # not a gateway variant: Orthanc itself, for scale
_SPIN = "while True: pass"
_FLUSH = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o600)\n"
    "block = os.urandom(512 * 1024)\n"
    "while True:\n"
    "    os.pwrite(fd, block, 0)\n"
    "    os.fdatasync(fd)\n"
)
NEIGHBOURS = {"cpu-neighbour": [_SPIN], "flush-neighbour": [_FLUSH]}


def _environment(variant: str) -> dict[str, str]:
    parts = variant.split("+")
    switches = ",".join(p for p in parts if p != "baseline" and p not in NEIGHBOURS)
    return {
        "PYTHONPATH": os.pathsep.join([str(PATCHES), str(REPO_ROOT)]),
        "BENCH_WHATIF": switches,
    }


def _run(ctx: Context, variant: str, files: tuple[Path, ...], total_bytes: int) -> dict[str, float]:
    label = f"whatif-{variant.replace('+', '_')}"
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(ctx.scratch(label))
        for part in variant.split("+"):
            if part in NEIGHBOURS:
                stack.enter_context(_neighbour(NEIGHBOURS[part], work))
        server: Running
        if REFERENCE in variant.split("+"):
            server = stack.enter_context(running_orthanc(work))
        else:
            server = stack.enter_context(
                running_gateway(gateway_config(work), env=_environment(variant))
            )
        cpu = cpu_seconds(server.pid)
        seconds = send_cstore(files, server)
        cpu = cpu_seconds(server.pid) - cpu
        stored = server.count_instances()
    if stored != len(files):
        raise BenchError(f"{variant}: {stored} of {len(files)} instances stored")
    return {
        "seconds": seconds,
        "instances_per_s": len(files) / seconds,
        "mb_per_s": total_bytes / MB / seconds,
        "cpu_ms_per_instance": cpu * 1000 / len(files),
    }


@contextlib.contextmanager
def _neighbour(code: list[str], work: Path) -> Iterator[None]:
    """A busy process beside the server for the duration of a run; stopped by its pid."""
    process = subprocess.Popen([sys.executable, "-c", *code, str(work / "neighbour.bin")])
    try:
        yield
    finally:
        process.kill()
        process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif", description=__doc__)
    parser.add_argument("--scenario", choices=("cstore-ct", "cstore-tiny"), default="cstore-ct")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    profile = profile_named("quick" if args.quick else "full")
    data_root = (args.data or default_data_root()).resolve()
    store = Store(data_root, profile)
    ctx = Context(store=store, profile=profile, work_root=data_root / "work" / "whatif")
    data = store.ct() if args.scenario == "cstore-ct" else store.tiny()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    # See Context.empty_trash: no round may follow a mass deletion.
    let_freed_inodes_age(inode_reuse_delay(ctx.work_root.parent), "before the first round")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for rep in range(args.repeat):
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            ctx.log(f"whatif {args.scenario}: round {rep + 1}/{args.repeat}, {variant}")
            runs[variant].append(_run(ctx, variant, data.files, data.total_bytes))
    ctx.empty_trash()
    medians = {
        v: {k: round(median([r[k] for r in rs]), 3) for k in rs[0]} for v, rs in runs.items() if rs
    }
    base = medians.get("baseline", {}).get("instances_per_s")
    rows = [
        {
            "variant": v,
            "instances_per_s": m["instances_per_s"],
            "mb_per_s": m["mb_per_s"],
            "cpu_ms_per_instance": m.get("cpu_ms_per_instance"),
            "vs_baseline": round(m["instances_per_s"] / base, 3) if base else None,
        }
        for v, m in medians.items()
    ]
    document: dict[str, Any] = {
        "scenario": args.scenario,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.whatif", *(sys.argv[1:] if argv is None else argv)]),
        "gateway_commit": versions().get("gateway_commit"),
        "load_average": load_average(),
        "instances": data.count,
        "megabytes": round(data.total_bytes / MB, 1),
        "repeat": args.repeat,
        "rows": rows,
        "runs": runs,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / f"whatif-{args.scenario}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{'variant':<34} {'inst/s':>8} {'MB/s':>8} {'CPU ms/inst':>12} {'vs baseline':>12}")
    for row in rows:
        ratio = f"{row['vs_baseline']:.2f}x" if row["vs_baseline"] else "-"
        print(
            f"{row['variant']:<34} {row['instances_per_s']:8.1f} {row['mb_per_s']:8.1f} "
            f"{row['cpu_ms_per_instance']:12.2f} {ratio:>12}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
