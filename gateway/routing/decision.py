"""The routing Decision: what every rule did for one instance, and where the instance goes.

A Decision is stored next to the instance (as JSON, in the same transaction as its deliveries)
so that ``dicom-gateway trace``, the admin API and the dashboard can say *why* an instance went
where it went long after the rules have changed. It therefore carries plain strings only, never
references to live rule objects, and `explain()` works from the stored form alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from gateway.exceptions import RuleError

DEFAULT_RULE = "<default>"  # Target.rule for destinations taken from routing_default
ABSENT = "<absent>"
EMPTY = "<empty>"
UNREADABLE = "<unreadable>"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One rule's result. For a miss, the first failing condition and the value seen.

    `skipped` rules were not evaluated; `failed_condition` then holds the reason ("disabled" or
    "stopped by final rule NAME"). `wanted` describes what the failing condition expected.
    """

    rule: str
    matched: bool
    skipped: bool
    failed_condition: str | None
    seen: str | None
    forward: tuple[str, ...]
    final: bool
    priority: int
    wanted: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """One destination to deliver to; `rule` is the first rule that named it (or <default>)."""

    destination: str
    rule: str
    priority: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The full routing result; `held` means no rule matched and routing_default is hold."""

    outcomes: tuple[RuleOutcome, ...]
    targets: tuple[Target, ...]
    held: bool
    stopped_by: str | None

    @classmethod
    def from_outcomes(
        cls, outcomes: tuple[RuleOutcome, ...], *, default: tuple[str, ...] | None
    ) -> Decision:
        """Derive targets, `held` and `stopped_by` from the rule outcomes, in one place.

        Targets are de-duplicated by destination: the first rule naming it is recorded, and the
        priority is the highest of all matched rules naming it. When no rule matched, the
        default destinations are used (rule ``<default>``), or the instance is held.
        """
        found: dict[str, Target] = {}
        for outcome in outcomes:
            if not outcome.matched:
                continue
            for name in outcome.forward:
                earlier = found.get(name, Target(name, outcome.rule, outcome.priority))
                found[name] = Target(name, earlier.rule, max(earlier.priority, outcome.priority))
        matched = any(outcome.matched for outcome in outcomes)
        if not matched:
            found = {name: Target(name, DEFAULT_RULE, 0) for name in default or ()}
        stopped_by = next((o.rule for o in outcomes if o.matched and o.final), None)
        return cls(outcomes, tuple(found.values()), not matched and default is None, stopped_by)

    def to_json(self) -> str:
        """Serialise for storage; `from_json` reads it back to an equal Decision."""
        return json.dumps({"version": FORMAT_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """Read a stored Decision; raises `RuleError` if the text is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise TypeError("not a version 1 routing decision")
            return cls(
                outcomes=tuple(_outcome(item) for item in _field(data, "outcomes", list)),
                targets=tuple(_target(item) for item in _field(data, "targets", list)),
                held=_field(data, "held", bool),
                stopped_by=_optional(data, "stopped_by"),
            )
        except KeyError as exc:
            raise RuleError(f"stored routing decision is malformed: missing {exc}") from None
        except (ValueError, TypeError) as exc:
            raise RuleError(f"stored routing decision is malformed: {exc}") from None

    def explain(self) -> list[str]:
        """Human-readable lines, one per rule, then one saying where the instance goes."""
        lines = [_explain_outcome(outcome) for outcome in self.outcomes]
        if self.held:
            lines.append("no rule matched: held (routing_default is hold)")
        elif not any(outcome.matched for outcome in self.outcomes):
            names = ", ".join(target.destination for target in self.targets)
            lines.append(f"no rule matched: routing_default -> {names}")
        else:
            shown = (
                f"{t.destination} (rule {t.rule}, priority {t.priority})" for t in self.targets
            )
            lines.append("deliver to: " + ", ".join(shown))
        return lines


def _explain_outcome(outcome: RuleOutcome) -> str:
    head = f"rule {outcome.rule}: "
    if outcome.skipped:
        return head + f"not evaluated: {outcome.failed_condition}"
    if outcome.matched:
        tail = " (final)" if outcome.final else ""
        return head + "matched -> " + ", ".join(outcome.forward) + tail
    seen = outcome.seen or ""
    if not (seen.startswith("<") and seen.endswith(">")):
        seen = repr(seen)
    wanted = f", wanted {outcome.wanted}" if outcome.wanted else ""
    return head + f"no match: {outcome.failed_condition} is {seen}{wanted}"


def _field(data: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(_field(data, key, str))


def _outcome(item: object) -> RuleOutcome:
    if not isinstance(item, dict):
        raise TypeError("outcomes: expected objects")
    return RuleOutcome(
        rule=_field(item, "rule", str),
        matched=_field(item, "matched", bool),
        skipped=_field(item, "skipped", bool),
        failed_condition=_optional(item, "failed_condition"),
        seen=_optional(item, "seen"),
        forward=tuple(_names(_field(item, "forward", list))),
        final=_field(item, "final", bool),
        priority=_field(item, "priority", int),
        wanted=_optional(item, "wanted"),
    )


def _target(item: object) -> Target:
    if not isinstance(item, dict):
        raise TypeError("targets: expected objects")
    return Target(
        destination=_field(item, "destination", str),
        rule=_field(item, "rule", str),
        priority=_field(item, "priority", int),
    )


def _names(items: list[Any]) -> list[str]:
    if not all(isinstance(item, str) for item in items):
        raise TypeError("forward: expected a list of strings")
    return items
