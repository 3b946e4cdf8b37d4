"""Every benchmark scenario, in the order the issue lists them.

Names are what ``--only`` matches (a name, or a prefix such as ``cstore`` or ``stow``).
``qido-100k`` runs only when asked for (``--qido-100k`` or ``--only qido-100k``): seeding
100 k instances into both systems takes tens of minutes.
"""

from __future__ import annotations

from bench.scenarios import bridge, cstore, qido, stow, wado
from bench.scenarios.base import BenchError, Context, Metric, Scenario

__all__ = ["OPTIONAL", "BenchError", "Context", "Metric", "Scenario", "all_scenarios"]

OPTIONAL = frozenset({"qido-100k"})


def all_scenarios() -> list[Scenario]:
    return [
        *cstore.scenarios(),
        *stow.scenarios(),
        bridge.Bridge(),
        *qido.scenarios(),
        *wado.scenarios(),
    ]
