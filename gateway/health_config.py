"""The `health` section and each destination's `health` and `failover` keys.

```yaml
health: {failure_threshold: 5, probe_interval: 30}     # defaults for every destination
destinations:
  pacs-a:
    type: dimse
    ...
    health: {failure_threshold: 3}                      # this destination only
    failover: {to: pacs-b, after: 600}                  # seconds down before work moves
```

Kept apart from the destination kinds (gateway/destinations.py): every kind accepts the same
two keys, read here from the raw mapping, so adding a kind never touches the breaker.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.exceptions import ConfigError

DESTINATION_KEYS = frozenset({"health", "failover"})
"""Keys every destination kind accepts; gateway/destinations.py leaves them to this module."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """When a destination's breaker opens and how often it is probed while open."""

    failure_threshold: int = 5  # consecutive whole-batch transient failures -> down
    probe_interval: float = 30.0  # seconds between probes (instance or idle probe) while down


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPolicy:
    to: str
    after: float  # seconds down before pending deliveries move to `to`


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    default: HealthPolicy = field(default_factory=HealthPolicy)
    policies: Mapping[str, HealthPolicy] = field(default_factory=dict)
    failover: Mapping[str, FailoverPolicy] = field(default_factory=dict)

    def policy(self, destination: str) -> HealthPolicy:
        return self.policies.get(destination, self.default)


def parse_health(raw: object, destinations: object, names: Collection[str]) -> HealthSettings:
    """Validate `health` and the destinations' `health`/`failover` keys (names already valid)."""
    default = _policy(raw, "health", HealthPolicy())
    policies: dict[str, HealthPolicy] = {}
    failover: dict[str, FailoverPolicy] = {}
    for name, entry in _mapping(destinations, "destinations").items():
        if not isinstance(entry, dict):
            continue  # gateway/destinations.py has already refused it
        key = f"destinations.{name}"
        if "health" in entry:
            policies[name] = _policy(entry["health"], f"{key}.health", default)
        if entry.get("failover") is not None:
            failover[name] = _failover(entry["failover"], f"{key}.failover", name, names)
    _refuse_cycles(failover)
    return HealthSettings(default=default, policies=policies, failover=failover)


def _policy(raw: object, key: str, base: HealthPolicy) -> HealthPolicy:
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"failure_threshold", "probe_interval"})
    return HealthPolicy(
        failure_threshold=int(
            _number(entry, key, "failure_threshold", base.failure_threshold, minimum=1)
        ),
        probe_interval=_number(entry, key, "probe_interval", base.probe_interval, minimum=0.1),
    )


def _failover(raw: object, key: str, name: str, names: Collection[str]) -> FailoverPolicy:
    entry: dict[str, Any] = _mapping(raw, key)
    _no_unknown(entry, key, {"to", "after"})
    target = entry.get("to")
    others = ", ".join(sorted(n for n in names if n != name)) or "none"
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}.to is required: the destination to fail over to ({others})")
    if target == name:
        raise ConfigError(f"{key}.to is {name!r} itself; name another destination ({others})")
    if target not in names:
        raise ConfigError(
            f"{key}.to is {target!r}, which is not a configured destination; use one of {others}"
        )
    after = _number(entry, key, "after", None, minimum=0)
    return FailoverPolicy(to=target, after=after)


def _refuse_cycles(failover: Mapping[str, FailoverPolicy]) -> None:
    # An acyclic failover graph also lets a move lock source then target without deadlock.
    for start in sorted(failover):
        path = [start]
        current = start
        while current in failover:
            current = failover[current].to
            if current in path:
                loop = " -> ".join([*path[path.index(current) :], current])
                raise ConfigError(
                    f"destinations.{start}.failover: {loop} is a cycle; remove the failover "
                    "key from one of these destinations"
                )
            path.append(current)
