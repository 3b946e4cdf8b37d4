"""What a result was measured on: machine, load, software versions, code revision.

Ratios only mean something next to this: the same run on a 2-core VM shared with other work and
on an idle 16-core server can differ by more than any optimisation.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.harness.env import native_program
from tests.harness.gateway import REPO_ROOT
from tests.harness.orthanc import ORTHANC_BINARY

__all__ = [
    "INODE_RECENCY_SECONDS",
    "filesystem",
    "inode_reuse_delay",
    "let_freed_inodes_age",
    "load_average",
    "machine_info",
    "versions",
]

INODE_RECENCY_SECONDS = 61.0
"""ext4 without a journal will not reuse an inode freed less than 60 s ago (fs/ext4/ialloc.c,
``recently_deleted``; 360 s while the inode table block is still dirty) and pays a buffer
lookup for every such inode it passes over when it creates a file."""


def machine_info(work: Path | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_meminfo_kb("MemTotal") / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "hostname": platform.node(),
    }
    if work is not None:
        info["filesystem"] = filesystem(work)
    return info


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`, e.g. "ext4 (no journal)"."""
    kind, device = _mount_of(path)
    if kind == "ext4" and _ext4_without_journal(device):
        return "ext4 (no journal)"
    return kind or "unknown"


def inode_reuse_delay(path: Path) -> float:
    """Seconds to wait after mass deletions under `path` before a measured run (0 if none)."""
    return INODE_RECENCY_SECONDS if filesystem(path) == "ext4 (no journal)" else 0.0


def let_freed_inodes_age(seconds: float, why: str) -> None:
    """Write the inode tables out and wait `seconds` (see `inode_reuse_delay`); 0 does nothing."""
    if seconds <= 0:
        return
    os.sync()
    print(f"[bench] waiting {seconds:.0f} s {why}", file=sys.stderr, flush=True)
    time.sleep(seconds)


def _mount_of(path: Path) -> tuple[str | None, str | None]:
    """(filesystem type, device name) of the longest mount point holding `path`."""
    target = str(path.resolve())
    best: tuple[int, str | None, str | None] = (-1, None, None)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, kind = fields[0], fields[1], fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            best = (len(point), kind, Path(device).name)
    return best[1], best[2]


def _ext4_without_journal(device: str | None) -> bool:
    if not device:
        return False
    try:
        return Path(f"/sys/fs/ext4/{device}/journal_task").read_text().strip() == "<none>"
    except OSError:
        return False


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "gateway": _package("dicom-gateway"),
        "gateway_commit": _git_revision(),
        "pydicom": _package("pydicom"),
        "pynetdicom": _package("pynetdicom"),
        "httpx": _package("httpx"),
        "uvicorn": _package("uvicorn"),
        "orthanc": _tool_version([str(ORTHANC_BINARY), "--version"], r"([0-9]+\.[0-9]+\.[0-9]+)"),
        "orthanc_dicomweb": _debian_version("orthanc-dicomweb"),
        "dcmtk": _tool_version(
            [native_program("storescp") or "storescp", "--version"], r"v([0-9]+\.[0-9]+\.[0-9]+)"
        ),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kb(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.MULTILINE)
    return match.group(1) if match else platform.system()


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr) if done.returncode == 0 else None


def _tool_version(argv: list[str], pattern: str) -> str | None:
    output = _run(argv)
    match = re.search(pattern, output or "")
    return match.group(1) if match else None


def _debian_version(package: str) -> str | None:
    output = _run(["dpkg-query", "-W", "-f=${Version}", package])
    return output.strip() if output else None


def _git_revision() -> str | None:
    head = _run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT)
    if head is None:
        return None
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
    return head.strip() + ("+dirty" if dirty else "")


if __name__ == "__main__":  # pragma: no cover - a quick look from the shell
    import json

    json.dump(
        {"machine": machine_info(), "versions": versions(), "python": sys.version}, sys.stdout
    )
