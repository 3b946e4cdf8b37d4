"""The routing engine: a pure function from (rules, header, context) to a `Decision`.

The conditions a rule can hold are defined here, next to the code that evaluates them, so what
the engine understands is visible in one place; `rules.py` only builds them from configuration.
The engine never reads the clock (the receive time is in the context), never touches pixel data
and never raises for bad header data: a value it cannot decode is reported as ``<unreadable>``
and the condition fails, so one odd instance cannot stop ingest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeAlias

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.exceptions import RuleError
from gateway.routing.decision import (
    ABSENT,
    EMPTY,
    UNREADABLE,
    Decision,
    RuleOutcome,
)

if TYPE_CHECKING:
    from gateway.routing.rules import Rule

ContextName: TypeAlias = Literal["calling_ae", "called_ae", "source", "site"]
CONTEXT_FIELDS: tuple[ContextName, ...] = ("calling_ae", "called_ae", "source", "site")
SOURCES = ("dimse", "stowrs", "import")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SEEN_LIMIT = 64
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})


@dataclass(frozen=True, slots=True)
class OneOf:
    """Some value equals one of `values` (stripped strings; numerically for numeric VRs)."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Regex:
    """Some value matches `pattern` in full (`re.fullmatch`)."""

    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Present:
    """The subject has a non-empty value (`expected=True`), or has none (`False`)."""

    expected: bool


@dataclass(frozen=True, slots=True)
class Not:
    """The inner test does not hold."""

    test: ValueTest


ValueTest: TypeAlias = OneOf | Regex | Present | Not


@dataclass(frozen=True, slots=True)
class ValueCondition:
    """`test` holds for the values of `subject`: a header tag, or a `RoutingContext` field.

    `label` names the condition in a Decision: the DICOM keyword, ``(gggg,eeee)`` for tags
    without one, or the context field name.
    """

    label: str
    subject: int | ContextName
    test: ValueTest


@dataclass(frozen=True, slots=True)
class DaysCondition:
    """The weekday of the receive time, local to `tz`, is in `days` (0 = Monday)."""

    days: frozenset[int]
    tz: tzinfo
    tz_name: str
    label: str = "time.days"


@dataclass(frozen=True, slots=True)
class HoursCondition:
    """The local time of day, in minutes, lies in [start, end); wraps midnight if end < start."""

    start: int
    end: int
    tz: tzinfo
    tz_name: str
    label: str = "time.hours"


Condition: TypeAlias = ValueCondition | DaysCondition | HoursCondition


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """How and when an instance arrived; everything the rules may ask besides the header."""

    source: str
    calling_ae: str | None
    called_ae: str | None
    site: str | None
    received_at: datetime

    def __post_init__(self) -> None:
        # Caller bugs, not data problems: fail loudly where the context is built.
        if self.source not in SOURCES:
            raise RuleError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        if self.received_at.utcoffset() is None:
            raise RuleError("received_at must be timezone-aware (use datetime.now(UTC))")


def evaluate(
    rules: Sequence[Rule],
    header: Dataset,
    context: RoutingContext,
    *,
    default: tuple[str, ...] | None,
) -> Decision:
    """Evaluate `rules` in order and record why each one did or did not match."""
    outcomes: list[RuleOutcome] = []
    stopped_by: str | None = None
    for rule in rules:
        if stopped_by is not None:
            outcomes.append(_outcome(rule, None, f"stopped by final rule {stopped_by}"))
        elif not rule.enabled:
            outcomes.append(_outcome(rule, None, "disabled"))
        else:
            miss = _first_miss(rule.conditions, header, context)
            outcomes.append(_outcome(rule, miss))
            if miss is None and rule.final:
                stopped_by = rule.name
    return Decision.from_outcomes(tuple(outcomes), default=default)


def _outcome(rule: Rule, miss: _Miss | None, skipped: str | None = None) -> RuleOutcome:
    return RuleOutcome(
        rule=rule.name,
        matched=miss is None and skipped is None,
        skipped=skipped is not None,
        failed_condition=skipped or (miss.label if miss else None),
        seen=miss.seen if miss else None,
        forward=rule.forward,
        final=rule.final,
        priority=rule.priority,
        wanted=miss.wanted if miss else None,
    )


class _Miss(NamedTuple):
    label: str
    seen: str
    wanted: str


class _Observed(NamedTuple):
    """What a subject looked like: its stripped values and how to show it in a Decision."""

    values: tuple[str, ...]
    present: bool
    shown: str
    readable: bool = True
    numeric: bool = False


_ABSENT = _Observed((), present=False, shown=ABSENT)
_EMPTY = _Observed((), present=False, shown=EMPTY)
_UNREADABLE = _Observed((), present=False, shown=UNREADABLE, readable=False)


def _first_miss(
    conditions: Sequence[Condition], header: Dataset, context: RoutingContext
) -> _Miss | None:
    for condition in conditions:
        if isinstance(condition, ValueCondition):
            observed = _observe(condition.subject, header, context)
            ok = observed.readable and _passes(condition.test, observed)
            seen, wanted = observed.shown, _describe(condition.test)
        else:
            local = context.received_at.astimezone(condition.tz)
            if isinstance(condition, DaysCondition):
                ok = local.weekday() in condition.days
                seen = DAY_NAMES[local.weekday()]
                days = ", ".join(DAY_NAMES[day] for day in sorted(condition.days))
                wanted = f"one of {days} ({condition.tz_name})"
            else:
                ok = _in_window(local.hour * 60 + local.minute, condition.start, condition.end)
                seen = f"{local:%H:%M}"
                wanted = f"{_clock(condition.start)}-{_clock(condition.end)} {condition.tz_name}"
        if not ok:
            clipped = seen if len(seen) <= SEEN_LIMIT else seen[: SEEN_LIMIT - 3] + "..."
            return _Miss(condition.label, clipped, wanted)
    return None


def _in_window(minute: int, start: int, end: int) -> bool:
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # the window wraps past midnight


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _observe(subject: int | ContextName, header: Dataset, ctx: RoutingContext) -> _Observed:
    if isinstance(subject, str):
        value: str | None = getattr(ctx, subject)
        if value is None:
            return _ABSENT
        text = value.strip()
        return _Observed((text,), present=True, shown=text) if text else _EMPTY
    try:
        if subject not in header:
            return _ABSENT
        element = header[subject]
        return _normalise(element.value, element.VR)
    except Exception:  # any decoding failure of untrusted data, whatever pydicom raises
        return _UNREADABLE


def _normalise(value: object, vr: str) -> _Observed:
    """Turn an element value into stripped strings, the only form the tests compare."""
    if value is None:
        return _EMPTY
    if isinstance(value, DicomSequence):
        return _Observed((), present=len(value) > 0, shown=f"<sequence of {len(value)} items>")
    if isinstance(value, bytes):
        try:  # private tags read as UN often hold plain text
            items: list[str] = value.decode("ascii").split("\\")
        except UnicodeDecodeError:
            return _Observed((), present=bool(value), shown=f"<binary, {len(value)} bytes>")
    elif isinstance(value, str):
        items = [value]
    elif isinstance(value, Sequence):  # MultiValue and lists of numbers or names
        items = [str(item) for item in value]
    else:
        items = [str(value)]
    values = tuple(item.rstrip(" \x00") for item in items)
    if not any(values):
        return _EMPTY
    return _Observed(values, present=True, shown="\\".join(values), numeric=vr in _NUMERIC_VRS)


def _passes(test: ValueTest, observed: _Observed) -> bool:
    if isinstance(test, Present):
        return observed.present == test.expected
    if isinstance(test, Not):
        return not _passes(test.test, observed)
    if isinstance(test, Regex):
        return any(test.pattern.fullmatch(value) for value in observed.values)
    return any(
        _equal(value, wanted, observed.numeric)
        for value in observed.values
        for wanted in test.values
    )


def _equal(value: str, wanted: str, numeric: bool) -> bool:
    if value == wanted:
        return True
    if not numeric:
        return False
    try:  # "1.50" in the header equals 1.5 in YAML
        return float(value) == float(wanted)
    except ValueError:
        return False


def _describe(test: ValueTest) -> str:
    if isinstance(test, Present):
        return "present" if test.expected else "absent"
    if isinstance(test, Not):
        return f"not {_describe(test.test)}"
    if isinstance(test, Regex):
        return f"regex {test.pattern.pattern!r}"
    return "one of " + ", ".join(test.values)
