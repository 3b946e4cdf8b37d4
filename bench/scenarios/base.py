"""What a scenario is: named systems, declared metrics, ``setup``/``run``/``teardown``.

The runner calls ``setup`` once, then ``run(ctx, system)`` for every system in every repetition
(interleaved: the order rotates per repetition), then ``teardown``. ``run`` returns one number
per metric it measured; it raises :class:`~bench.systems.EndpointUnavailable` when a system
does not offer the endpoint (the runner skips that system with the note) and any other exception
when something went wrong (the runner records the failure and carries on).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.datasets import Profile, Store
from bench.machine import let_freed_inodes_age

__all__ = ["BenchError", "Context", "Metric", "Scenario"]


class BenchError(RuntimeError):
    """A run did not do what it should (a store failed, a count is off): not a valid number."""


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Literal["higher", "lower"]


@dataclass
class Context:
    """What scenarios share: data, scratch space, the profile, long-lived servers."""

    store: Store
    profile: Profile
    work_root: Path
    options: dict[str, Any] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)
    trash: list[Path] = field(default_factory=list)

    @contextlib.contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A fresh folder for one run's servers, set aside afterwards (see `empty_trash`)."""
        folder = self.work_root / label
        self.set_aside(folder)
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            self.set_aside(folder)

    def persistent(self, label: str) -> Path:
        """A folder that lives until the scenario's teardown (servers seeded once)."""
        folder = self.work_root / label
        self.set_aside(folder)
        folder.mkdir(parents=True)
        self.stack.callback(self.set_aside, folder)
        return folder

    def set_aside(self, folder: Path) -> None:
        """Move `folder` (if it exists) out of the way; `empty_trash` deletes it later."""
        if not folder.exists():
            return
        aside = self.work_root / ".trash" / f"{folder.name}-{len(self.trash)}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(aside)
        self.trash.append(aside)

    def empty_trash(self, settle_seconds: float = 0.0) -> None:
        """Delete the folders runs left behind, then wait `settle_seconds` if any were deleted.

        Why not delete after each run: ext4 without a journal (the root filesystem of the
        machine these figures come from) passes over every inode freed in the last 60 s (360 s
        while its inode table block is unwritten) each time it creates a file. A run started
        right after the previous one deleted its thousands of files paid for that (10 KB
        C-STORE: 7-10 % slower, +0.2 ms CPU per instance, measured). So runs of one scenario
        never follow a deletion; between scenarios the runner deletes, writes the inode tables
        out (`sync`) and waits the recency out (see bench.machine.inode_reuse_delay).
        """
        if not self.trash:
            return
        for folder in self.trash:
            shutil.rmtree(folder, ignore_errors=True)
        self.trash.clear()
        with contextlib.suppress(OSError):
            (self.work_root / ".trash").rmdir()
        let_freed_inodes_age(settle_seconds, "after deleting scratch folders")

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


class Scenario:
    """Base class; subclasses set the class attributes and implement :meth:`run`."""

    name: str
    title: str
    systems: tuple[str, ...]
    metrics: tuple[Metric, ...]

    def workload(self, ctx: Context) -> dict[str, Any]:
        """What was measured (counts, sizes, batch sizes), for the JSON and the report."""
        return {}

    def setup(self, ctx: Context) -> None:
        """Generate data, start long-lived servers (register them on ``ctx.stack``)."""

    def run(self, ctx: Context, system: str) -> dict[str, float]:
        raise NotImplementedError

    def teardown(self, ctx: Context) -> None:
        """Undo :meth:`setup` beyond what ``ctx.stack`` undoes."""
