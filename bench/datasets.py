"""Benchmark data: deterministic, generated once with the test harness, reused across runs.

Data lives outside the repository, in ``$BENCH_DATA`` or ``~/.cache/dicom-gateway-bench``.
Each set is a folder named after its parameters and holds a ``.complete`` marker written
last, so an interrupted generation is redone and a changed size never reuses stale files.
The generators are the harness's (:func:`tests.harness.make_ct_series` and friends): the same
arguments give byte-identical files on every machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness import make_ct_series, make_multiframe, make_tiny_instances

__all__ = ["DataSet", "Profile", "Store", "default_data_root", "profile_named"]

_MARKER = ".complete"


def default_data_root() -> Path:
    env = os.environ.get("BENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dicom-gateway-bench"


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Workload sizes. ``full`` is the issue's; ``quick`` and ``smoke`` shrink every set."""

    name: str
    ct_count: int  # CT instances (0.5 MB at 512x512)
    ct_side: int
    multiframe_count: int
    multiframe_bytes: int
    tiny_count: int  # ~10 KB instances
    stow_batch: int  # instances per STOW-RS request
    qido_series: int  # instances in the series the instance-level query returns
    qido_small: int  # total indexed instances, the "2 k" case
    qido_large: int  # total indexed instances, the "100 k" case
    qido_fill_per_study: int
    queries: int  # queries per QIDO level per repetition
    repeat: int  # default repetitions


PROFILES = {
    "full": Profile(
        name="full",
        ct_count=300,
        ct_side=512,
        multiframe_count=3,
        multiframe_bytes=210_000_000,
        tiny_count=2000,
        stow_batch=50,
        qido_series=300,
        qido_small=2000,
        qido_large=100_000,
        qido_fill_per_study=50,
        queries=100,
        repeat=3,
    ),
    "quick": Profile(
        name="quick",
        ct_count=100,
        ct_side=512,
        multiframe_count=1,
        multiframe_bytes=210_000_000,
        tiny_count=500,
        stow_batch=50,
        qido_series=300,
        qido_small=2000,
        qido_large=100_000,
        qido_fill_per_study=50,
        queries=30,
        repeat=1,
    ),
    "smoke": Profile(
        name="smoke",
        ct_count=4,
        ct_side=128,
        multiframe_count=1,
        multiframe_bytes=2_000_000,
        tiny_count=8,
        stow_batch=3,
        qido_series=6,
        qido_small=20,
        qido_large=40,
        qido_fill_per_study=5,
        queries=3,
        repeat=1,
    ),
}


def profile_named(name: str) -> Profile:
    return PROFILES[name]


@dataclass(frozen=True, slots=True)
class DataSet:
    """A generated set of Part 10 files and the facts scenarios need about it."""

    name: str
    files: tuple[Path, ...]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


class Store:
    """The data folder; ``ct()``, ``tiny()``... generate on first use and reuse afterwards."""

    def __init__(self, root: Path, profile: Profile) -> None:
        self.root = Path(root)
        self.profile = profile

    def ct(self) -> DataSet:
        p = self.profile
        return self._set(
            f"ct-{p.ct_count}x{p.ct_side}",
            lambda d: make_ct_series(d, p.ct_count, rows=p.ct_side, cols=p.ct_side, seed=7001),
        )

    def tiny(self) -> DataSet:
        p = self.profile
        return self._set(
            f"tiny-{p.tiny_count}", lambda d: make_tiny_instances(d, p.tiny_count, seed=7002)
        )

    def multiframe(self) -> DataSet:
        p = self.profile

        def make(folder: Path) -> list[Path]:
            return [
                make_multiframe(folder / f"mf_{i}.dcm", p.multiframe_bytes, seed=7100 + i)
                for i in range(p.multiframe_count)
            ]

        return self._set(f"multiframe-{p.multiframe_count}x{p.multiframe_bytes}", make)

    def qido_series(self) -> DataSet:
        """One study with one series of ``qido_series`` tiny instances (the 300-result query)."""
        p = self.profile
        return self._set(
            f"qido-series-{p.qido_series}",
            lambda d: make_tiny_instances(d, p.qido_series, seed=7200, patient_name="QIDO^TARGET"),
        )

    def qido_fill(self, total: int) -> DataSet:
        """Other studies of ``qido_fill_per_study`` tiny instances each, up to ``total`` overall.

        Each study has its own patient, so a study-level query by PatientID returns one study.
        """
        p = self.profile
        studies = max(0, total - p.qido_series) // p.qido_fill_per_study

        def make(folder: Path) -> list[Path]:
            files: list[Path] = []
            for study in range(studies):
                files += make_tiny_instances(
                    folder / f"study_{study:05d}",
                    p.qido_fill_per_study,
                    seed=8000 + study,
                    patient_name=f"FILL^{study:05d}",
                )
                if studies >= 200 and study % 200 == 199:
                    _progress(f"qido fill: {study + 1}/{studies} studies")
            return files

        return self._set(f"qido-fill-{studies}x{p.qido_fill_per_study}", make)

    def _set(self, name: str, make: Callable[[Path], list[Path]]) -> DataSet:
        folder = self.root / name
        marker = folder / _MARKER
        if marker.is_file():
            listed = json.loads(marker.read_text())["files"]
            return DataSet(name, tuple(folder / rel for rel in listed))
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _progress(f"generating {name} in {folder} (once)")
        files = make(folder)
        marker.write_text(json.dumps({"files": [str(p.relative_to(folder)) for p in files]}))
        return DataSet(name, tuple(files))


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
