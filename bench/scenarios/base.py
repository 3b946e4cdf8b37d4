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

    @contextlib.contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A fresh folder for one run's servers, deleted afterwards."""
        folder = self.work_root / label
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def persistent(self, label: str) -> Path:
        """A folder that lives until the scenario's teardown (servers seeded once)."""
        folder = self.work_root / label
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.stack.callback(shutil.rmtree, folder, True)
        return folder

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
