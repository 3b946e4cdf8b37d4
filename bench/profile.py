"""Where the gateway's time goes during C-STORE ingest: py-spy samples grouped by cost.

    python -m bench.profile [--scenario cstore-ct|cstore-tiny|cstore-multiframe]
                            [--rate 200] [--passes 3] [--quick] [--idle-association]

A fresh gateway process ingests the scenario's data from storescu (as in ``python -m bench``)
while ``py-spy record --pid`` samples it; ``--passes`` such runs for on-CPU samples, as many
with idle threads included (``--idle``), stacks summed. Each sampled stack is assigned one
cost by its deepest frame that is ours (``gateway/...``: receive loop, header parse,
structure walk, sha256, fsync, SQLite commit...) or else the library's, reading the sampled
source line to tell e.g. ``os.fsync`` from ``digest.update`` in the same function. Views:

* **CPU**: every thread's on-CPU samples (where the two cores' time goes);
* **association thread, wall**: the thread that receives the data set and runs ingest, idle
  included: the split of the time between two acknowledgements;
* **DUL thread, wall**: only for a gateway built on pynetdicom's acceptor (before the
  listener's own association loop), its socket reader.

Writes ``bench/results/profile-<scenario>.json`` (rendered into docs/benchmarks.md by
``python -m bench.report``) and keeps py-spy's raw stacks next to it
(``profile-<scenario>-cpu.txt``, ``-wall.txt``: load them into speedscope or flamegraph.pl);
``--analyse-only`` re-reads those instead of recording. Needs py-spy
(``pip install -e '.[bench]'``) and permission to ptrace the gateway (root, or
``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import json
import linecache
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.datasets import DataSet, Store, default_data_root, profile_named
from bench.machine import load_average, versions
from bench.measure import cpu_seconds
from bench.scenarios.base import Context
from bench.scenarios.cstore import send_cstore
from bench.systems import gateway_config, running_gateway
from tests.harness.gateway import REPO_ROOT

__all__ = ["Frame", "Tally", "classify", "parse_raw", "summarise_samples", "thread_role"]

RESULTS = Path(__file__).resolve().parent / "results"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int

    @property
    def text(self) -> str:
        """The sampled source line (empty if the file cannot be found)."""
        path = _resolve(self.file)
        return linecache.getline(str(path), self.line).strip() if path else ""


def _search_roots() -> list[Path]:
    roots = [REPO_ROOT]
    roots += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    return roots


_ROOTS: list[Path] = []
_RESOLVED: dict[str, Path | None] = {}


def _resolve(file: str) -> Path | None:
    if file not in _RESOLVED:
        if not _ROOTS:
            _ROOTS.extend(_search_roots())
        candidate = Path(file)
        found = candidate if candidate.is_absolute() and candidate.is_file() else None
        for root in [] if found else _ROOTS:
            if (root / file).is_file():
                found = root / file
                break
        _RESOLVED[file] = found
    return _RESOLVED[file]


def parse_raw(text: str) -> list[tuple[str, list[Frame], int]]:
    """py-spy ``--format raw --threads`` lines -> (thread label, frames root->leaf, count)."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        parts = match.group("stack").split(";")
        thread = parts[0]
        frames = []
        for part in parts[1:]:
            frame = _FRAME.match(part)
            if frame:
                frames.append(Frame(frame["func"], frame["file"], int(frame["line"])))
        samples.append((thread, frames, int(match.group("count"))))
    return samples


def _module(frame: Frame) -> str:
    file = frame.file.replace("\\", "/")
    for package in (
        "gateway/",
        "pynetdicom/",
        "pydicom/",
        "logging/",
        "opentelemetry/",
        "uvicorn/",
    ):
        index = file.rfind(package)
        if index >= 0:
            return file[index:]
    return file.rsplit("/", 1)[-1]


def _ours(frame: Frame) -> bool:
    return _module(frame).startswith("gateway/")


def _ours_cost(frame: Frame, below: Sequence[Frame]) -> str:
    """The cost of a sample whose deepest own frame is ``frame`` (``below``: library frames)."""
    module = _module(frame)
    text = frame.text
    below_modules = [_module(f) for f in below]
    if any(m.startswith("logging/") for m in below_modules) or text.startswith("log."):
        return "logging (per-instance log line)"
    if any(m.startswith("opentelemetry/") for m in below_modules) or "telemetry" in module:
        return "telemetry (OpenTelemetry spans)"
    if module == "gateway/dimse/pdu.py":
        return "receive: socket recv (waiting for the next PDU)"
    if module in ("gateway/dimse/commands.py", "gateway/dicom/file_meta.py"):
        return "receive: command set + file meta encode/decode"
    if module in ("gateway/dimse/association.py", "gateway/dimse/listener.py"):
        if "sendall" in text:
            return "receive: sending the response"
        if "write" in text:
            return "receive: writing fragments to the staging file"
        return "receive: association loop"
    if module == "gateway/dicom/header.py":
        if any(m.startswith("pydicom/") for m in below_modules) or "dcmread" in text:
            return "header parse (pydicom dcmread)"
        return "header checks (UIDs, file meta)"
    if module == "gateway/dicom/structure.py":
        return "structure walk (completeness check)"
    if module == "gateway/dicom/uids.py":
        return "header checks (UIDs, file meta)"
    if module == "gateway/dicom/attributes.py":
        if "json" in frame.function.lower() or "json" in text.lower():
            return "DICOM JSON header build"
        return "indexed values (QIDO columns)"
    if module.startswith("gateway/routing/"):
        return "routing (rule evaluation)"
    if module == "gateway/spool/filesystem.py":
        if "fsync" in text or frame.function.endswith("_fsync_dir"):
            return "fsync (file and folder)"
        if "digest" in text or ".read(" in text:
            return "sha256 (re-reading the received file)"
        if "replace" in text or "mkdir" in text or frame.function.endswith("_make_parents"):
            return "rename into the spool"
        return "spool key + path checks"
    if module.startswith("gateway/spool/"):
        return "spool key + path checks"
    if module.startswith("gateway/db/"):
        if "commit" in text.lower():
            return "SQLite commit (one per instance)"
        if "connect" in text or "begin" in text.lower():
            return "SQLite begin / connection"
        return "SQLite statements (outbox rows)"
    return "ingest / handler glue"


_WAIT_TEXT = ("sleep(", ".wait(", "acquire(", ".select(", ".poll(", ".get(block")


def _waiting(frames: Sequence[Frame]) -> bool:
    """True if the sampled thread sits in a blocking wait (lock, select, sleep, queue)."""
    return bool(frames) and any(word in frames[-1].text for word in _WAIT_TEXT)


def _library_cost(frames: Sequence[Frame]) -> tuple[str, str]:
    # Deepest pynetdicom frame decides; below it may sit pydicom or the stdlib.
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        module = _module(frame)
        if not module.startswith("pynetdicom/"):
            continue
        text = frame.text
        below = [_module(f) for f in frames[index + 1 :]]
        if "sleep(" in text:
            return "pynetdicom", "reactor polling (1 ms sleeps, wake-ups)"
        if module in ("pynetdicom/acse.py", "pynetdicom/presentation.py") or any(
            f.function.endswith("process_request_thread") for f in frames[: index + 1]
        ):
            return "pynetdicom", "association set-up (context negotiation)"
        if _waiting(frames):
            return "pynetdicom", "waiting on a queue / event"
        if module in ("pynetdicom/dul.py", "pynetdicom/transport.py"):
            if "recv" in text or "ready" in text or any(m == "socket.py" for m in below):
                return "pynetdicom", "socket readiness + recv"
            return "pynetdicom", "DUL reactor loop"
        if module in ("pynetdicom/pdu.py", "pynetdicom/pdu_items.py"):
            return "pynetdicom", "PDU decode/encode"
        if module == "pynetdicom/pdu_primitives.py":
            return "pynetdicom", "PDU <-> primitive conversion"
        if module in ("pynetdicom/dimse_messages.py", "pynetdicom/dimse.py"):
            if "write" in text or any(m == "tempfile.py" for m in below):
                return "pynetdicom", "writing received fragments to the temp file"
            return "pynetdicom", "DIMSE message assembly"
        if module == "pynetdicom/dsutils.py" or any(m.startswith("pydicom/") for m in below):
            return "pynetdicom", "command set encode/decode (pydicom)"
        if module == "pynetdicom/fsm.py":
            return "pynetdicom", "state machine"
        if module in ("pynetdicom/association.py", "pynetdicom/service_class.py"):
            return "pynetdicom", "association reactor + C-STORE dispatch"
        return "pynetdicom", f"other ({module})"
    return "other", "other threads / interpreter"


# Modules whose time is the library's below them, not ours (none since the listener's own
# association loop replaced pynetdicom's acceptor).
_TRANSPARENT: frozenset[str] = frozenset()


def classify(frames: Sequence[Frame]) -> tuple[str, str]:
    """(group, cost) of one sampled stack."""
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if _ours(frame) and _module(frame) not in _TRANSPARENT:
            return "gateway handler", _ours_cost(frame, frames[index + 1 :])
    return _library_cost(frames)


def thread_role(thread: str, frames: Sequence[Frame]) -> str:
    """``association`` (runs the handler), ``dul`` (reads the socket) or ``other``."""
    if "run_reactor" in thread or any(
        _module(f) == "pynetdicom/dul.py" and f.function.endswith("run_reactor") for f in frames
    ):
        return "dul"
    name = thread.split(":", 1)[-1].strip()
    if (
        name.startswith(("AcceptorThread", "dimse-1", "dimse-:"))
        or any(_module(f) == "pynetdicom/association.py" for f in frames)
        or any(_module(f) == "gateway/dimse/association.py" for f in frames)
    ):
        return "association"
    return "other"


@dataclass
class Tally:
    """Sample counts per (group, cost) for one view of a profile."""

    costs: Counter[tuple[str, str]]
    total: int

    def share(self, key: tuple[str, str]) -> float:
        return self.costs.get(key, 0) / self.total if self.total else 0.0


def summarise_samples(samples: Sequence[tuple[str, list[Frame], int]], *, view: str) -> Tally:
    """Count samples for one view.

    ``cpu``: every thread, minus samples parked in a blocking wait outside our handler
    (py-spy's idle detection lets a few through); pynetdicom's 1 ms polling sleeps stay: they
    are real wake-ups, a thousand a second per loop. ``association`` / ``dul``: the busiest
    thread of that role only (the benchmark's association, not the readiness probe's), waits
    included: its wall time.
    """
    costs: Counter[tuple[str, str]] = Counter()
    chosen = None if view == "cpu" else _busiest(samples, view)
    for thread, frames, count in samples:
        role = thread_role(thread, frames)
        if view == "cpu":
            key = classify(frames)
            parked = _waiting(frames) and not key[1].startswith("reactor polling")
            if parked and (role == "other" or key[0] != "gateway handler"):
                continue
        elif thread != chosen:
            continue
        costs[classify(frames)] += count
    return Tally(costs, sum(costs.values()))


def _busiest(samples: Sequence[tuple[str, list[Frame], int]], role: str) -> str | None:
    busy: Counter[str] = Counter()
    for thread, frames, count in samples:
        if thread_role(thread, frames) == role and not _waiting(frames):
            busy[thread] += count
    return busy.most_common(1)[0][0] if busy else None


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -e '.[bench]'")
    return found


def _record(data: DataSet, ctx: Context, rate: int, idle: bool, raw: Path) -> float:
    """Ingest ``data`` into a fresh gateway under py-spy; returns the ingest's seconds."""
    with ctx.scratch(f"profile-{raw.stem}") as work, running_gateway(gateway_config(work)) as gw:
        argv = [_py_spy(), "record", "--pid", str(gw.pid), "--rate", str(rate)]
        argv += ["--format", "raw", "--threads", "--output", str(raw)]
        argv += ["--idle"] if idle else []
        spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1.5)  # py-spy attaches and starts sampling
            if spy.poll() is not None:
                raise SystemExit(f"py-spy exited early: {spy.stdout.read() if spy.stdout else ''}")
            seconds = send_cstore(data.files, gw)
        finally:
            if spy.poll() is None:
                os.kill(spy.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
            output, _ = spy.communicate(timeout=60)
        if not raw.is_file():
            raise SystemExit(f"py-spy wrote nothing: {output}")
    return seconds


def _record_passes(
    data: DataSet, ctx: Context, rate: int, idle: bool, raw: Path, passes: int
) -> float:
    """:func:`_record` ``passes`` times (a fresh gateway each); stacks summed into ``raw``."""
    merged: Counter[str] = Counter()
    seconds = 0.0
    for number in range(passes):
        part = raw.with_name(f"{raw.stem}.pass{number}.txt")
        seconds += _record(data, ctx, rate, idle, part)
        for line in part.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                merged[stack] += int(count)
        part.unlink()
    raw.write_text("".join(f"{stack} {count}\n" for stack, count in merged.items()))
    return seconds / passes


def idle_association_cost(ctx: Context, seconds: float = 10.0) -> dict[str, float]:
    """The gateway's CPU use while idle, with no association and with one open but silent.

    pynetdicom's reactors poll (1 ms sleeps) instead of blocking, so an open association
    costs CPU even when nothing arrives: this prices the polling on its own.
    """
    from pynetdicom import AE

    with ctx.scratch("profile-idle") as work, running_gateway(gateway_config(work)) as gw:
        time.sleep(2.0)  # let start-up settle
        before = cpu_seconds(gw.pid)
        time.sleep(seconds)
        idle = (cpu_seconds(gw.pid) - before) / seconds
        ae = AE(ae_title="BENCHIDLE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title=gw.aet)
        try:
            if not assoc.is_established:
                raise SystemExit("no association with the gateway")
            time.sleep(1.0)
            before = cpu_seconds(gw.pid)
            time.sleep(seconds)
            open_idle = (cpu_seconds(gw.pid) - before) / seconds
        finally:
            assoc.release()
            ae.shutdown()
    # The client's own reactors poll too, in this process: not counted (other pid).
    return {"idle_cpu_share": round(idle, 4), "open_association_cpu_share": round(open_idle, 4)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument(
        "--scenario", choices=("cstore-ct", "cstore-tiny", "cstore-multiframe"), default="cstore-ct"
    )
    parser.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    parser.add_argument(
        "--passes", type=int, default=3, help="ingest runs per view, each a fresh gateway (3)"
    )
    parser.add_argument("--quick", action="store_true", help="the quick profile's data sets")
    parser.add_argument("--data", type=Path, help="data folder (as for python -m bench)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--analyse-only", action="store_true", help="re-read the raw files of the last recording"
    )
    parser.add_argument(
        "--idle-association",
        action="store_true",
        help="only measure the CPU an idle gateway uses with and without an open association",
    )
    args = parser.parse_args(argv)

    profile = profile_named("quick" if args.quick else "full")
    data_root = (args.data or default_data_root()).resolve()
    store = Store(data_root, profile)
    ctx = Context(store=store, profile=profile, work_root=data_root / "work" / "profile")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.idle_association:
        cost = idle_association_cost(ctx)
        ctx.empty_trash()
        (args.output_dir / "idle-association.json").write_text(json.dumps(cost, indent=2) + "\n")
        print(
            f"gateway CPU while idle: {cost['idle_cpu_share']:.1%} of a core; with one open, "
            f"silent association: {cost['open_association_cpu_share']:.1%} of a core"
        )
        return 0
    data = {
        "cstore-ct": store.ct,
        "cstore-tiny": store.tiny,
        "cstore-multiframe": store.multiframe,
    }[args.scenario]()
    stem = f"profile-{args.scenario}"
    raw_cpu = args.output_dir / f"{stem}-cpu.txt"
    raw_wall = args.output_dir / f"{stem}-wall.txt"
    previous_path = args.output_dir / f"{stem}.json"
    if args.analyse_only:
        previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
        seconds_cpu = previous.get("seconds", math.nan)
        seconds_wall = previous.get("seconds_wall_run", math.nan)
    else:
        seconds_cpu = _record_passes(data, ctx, args.rate, False, raw_cpu, args.passes)
        seconds_wall = _record_passes(data, ctx, args.rate, True, raw_wall, args.passes)
        ctx.empty_trash()

    cpu = summarise_samples(parse_raw(raw_cpu.read_text()), view="cpu")
    wall = parse_raw(raw_wall.read_text())
    association = summarise_samples(wall, view="association")
    dul = summarise_samples(wall, view="dul")
    keys = sorted(
        set(cpu.costs) | set(association.costs) | set(dul.costs),
        key=lambda k: (-cpu.costs.get(k, 0), -association.costs.get(k, 0)),
    )
    categories = [
        {
            "group": group,
            "name": name,
            "cpu_samples": cpu.costs.get((group, name), 0),
            "cpu_share": round(cpu.share((group, name)), 4),
            "association_wall_share": round(association.share((group, name)), 4),
            "dul_wall_share": round(dul.share((group, name)), 4),
        }
        for group, name in keys
    ]
    document: dict[str, Any] = {
        "scenario": args.scenario,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.profile", *(argv or sys.argv[1:])]),
        "gateway_commit": versions().get("gateway_commit"),
        "load_average": load_average(),
        "rate": args.rate,
        "passes": args.passes,
        "instances": data.count,
        "megabytes": round(data.total_bytes / 1e6, 1),
        "seconds": round(seconds_cpu, 2),
        "seconds_wall_run": round(seconds_wall, 2),
        "samples": {"cpu": cpu.total, "association": association.total, "dul": dul.total},
        "categories": categories,
    }
    out = args.output_dir / f"{stem}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{args.scenario}: {data.count} instances in {seconds_cpu:.2f} s under py-spy")
    print(f"{'where':<16} {'cost':<46} {'CPU':>7} {'assoc':>7} {'DUL':>7}")
    for row in categories:
        print(
            f"{row['group']:<16} {row['name']:<46} {row['cpu_share']:7.1%} "
            f"{row['association_wall_share']:7.1%} {row['dul_wall_share']:7.1%}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
