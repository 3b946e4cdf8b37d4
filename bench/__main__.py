"""``python -m bench``: run the benchmarks, print a table, write ``bench/results/latest.json``.

Examples::

    python -m bench                      # every scenario, 3 interleaved repetitions
    python -m bench --quick              # smaller sets, 1 repetition: a first look
    python -m bench --only cstore --repeat 5
    python -m bench --qido-100k          # also QIDO at 100 k indexed instances (slow to seed)
    python -m bench --list
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.datasets import default_data_root, profile_named
from bench.runner import command_line, format_targets, run_all
from bench.scenarios import OPTIONAL, Scenario, all_scenarios

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller data sets, 1 repetition")
    size.add_argument(
        "--smoke", action="store_true", help="a handful of tiny instances (CI smoke test)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only scenarios whose name is or starts with NAME (repeatable)",
    )
    parser.add_argument("--repeat", type=int, help="repetitions per system (default 3; quick 1)")
    parser.add_argument(
        "--qido-100k", action="store_true", help="also QIDO at 100 k indexed instances (slow)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="data folder (default $BENCH_DATA or ~/.cache/dicom-gateway-bench)",
    )
    parser.add_argument("--work", type=Path, help="scratch folder for servers (default DATA/work)")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON result (default {RESULTS})"
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds to wait after deleting a scenario's files (default: 61 on ext4 without"
        " a journal, else 0; smoke 0): see docs/benchmarks.md, Method",
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    return parser


def select(scenarios: Sequence[Scenario], only: Sequence[str], qido_100k: bool) -> list[Scenario]:
    chosen = []
    for scenario in scenarios:
        if only:
            exact = scenario.name in only
            if not (exact or any(scenario.name.startswith(prefix) for prefix in only)):
                continue
            if scenario.name in OPTIONAL and not (exact or qido_100k):
                continue
        elif scenario.name in OPTIONAL and not qido_100k:
            continue
        chosen.append(scenario)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    scenarios = all_scenarios()
    if args.list:
        for scenario in scenarios:
            extra = " (optional: --qido-100k)" if scenario.name in OPTIONAL else ""
            print(f"{scenario.name:<18} {scenario.title}{extra}")
        return 0
    chosen = select(scenarios, args.only, args.qido_100k)
    if not chosen:
        print(f"no scenario matches {args.only}; see --list", file=sys.stderr)
        return 2
    profile = profile_named("smoke" if args.smoke else "quick" if args.quick else "full")
    data_root = (args.data or default_data_root()).resolve()
    work_root = (args.work or Path(os.environ.get("BENCH_WORK", data_root / "work"))).resolve()
    settle = 0.0 if args.smoke and args.settle is None else args.settle
    document = run_all(
        chosen,
        profile=profile,
        repeat=args.repeat or profile.repeat,
        data_root=data_root,
        work_root=work_root,
        command=command_line(argv),
        output=args.output,
        settle_seconds=settle,
    )
    print(format_targets([t for t in document["targets"] if t["met"] is not None]))
    print(f"\nresults: {args.output}  (render docs with: python -m bench.report)")
    failed = [
        f"{s['name']}/{system}"
        for s in document["scenarios"]
        for system, status in s["status"].items()
        if status == "failed"
    ]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
