"""The rule model and its loader: YAML-derived lists and dicts in, frozen `Rule`s out.

Everything that can be wrong with a rule is found here, at load time, so evaluation never has to
report a configuration problem: keywords become tags, regular expressions are compiled, time zones
are looked up and destinations are checked against the configured set. Every `ConfigError` names
the key path (``routes[2].match.Modality``) and says how to fix it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag

from gateway.exceptions import ConfigError
from gateway.routing.engine import (
    CONTEXT_FIELDS,
    DAY_NAMES,
    SOURCES,
    Condition,
    DaysCondition,
    HoursCondition,
    Not,
    OneOf,
    Present,
    Regex,
    ValueCondition,
    ValueTest,
)

_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
RULE_KEYS = ("enabled", "final", "forward", "match", "name", "priority")
TIME_KEYS = ("days", "hours", "timezone")
TEST_KEYS = ("equals", "not", "one_of", "present", "regex")
_HEX_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?|([0-9A-Fa-f]{8})")
_HOURS = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_NOT_ROUTABLE_GROUPS = (0x7FE0, 0xFFFE)  # pixel data is never read; item tags are not attributes


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``routes``: when every condition holds, forward to `forward`."""

    name: str
    conditions: tuple[Condition, ...]
    forward: tuple[str, ...]
    final: bool
    priority: int
    enabled: bool


def load_rules(
    raw_routes: object, destinations: Collection[str], *, key: str = "routes"
) -> tuple[Rule, ...]:
    """Validate the parsed ``routes`` list; a missing list (None) means no rules."""
    if raw_routes is None:
        return ()
    if not isinstance(raw_routes, list | tuple):
        raise ConfigError(f"{key}: expected a list of rules, got {_kind(raw_routes)}")
    rules: list[Rule] = []
    first_use: dict[str, str] = {}
    for index, raw in enumerate(raw_routes):
        path = f"{key}[{index}]"
        rule = _load_rule(raw, path, destinations)
        if rule.name in first_use:
            raise ConfigError(
                f"{path}.name: duplicate rule name {rule.name!r} (already used by "
                f"{first_use[rule.name]}); give every rule a unique name"
            )
        first_use[rule.name] = path
        rules.append(rule)
    return tuple(rules)


def load_default(
    raw: object, destinations: Collection[str], *, key: str = "routing_default"
) -> tuple[str, ...] | None:
    """Read ``routing_default``; missing or ``hold`` keeps unmatched instances (None)."""
    if raw is None or raw == "hold":
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(f"{key}: expected 'hold' or a list of destinations, got {_kind(raw)}")
    return _destinations(raw, key, destinations)


def _load_rule(raw: object, path: str, destinations: Collection[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping with name, match, forward; got {_kind(raw)}")
    _check_keys(raw, path, RULE_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}.name: missing; give every rule a name (a non-empty string)")
    if name != name.strip() or name.startswith("<"):
        raise ConfigError(f"{path}.name: {name!r}: remove surrounding spaces and a leading '<'")
    forward = raw.get("forward")
    if isinstance(forward, str):
        forward = [forward]
    if not isinstance(forward, list | tuple) or not forward:
        raise ConfigError(f"{path}.forward: expected a list of destinations, got {_kind(forward)}")
    return Rule(
        name=name,
        conditions=_load_match(raw.get("match"), f"{path}.match"),
        forward=_destinations(forward, f"{path}.forward", destinations),
        final=_boolean(raw.get("final", False), f"{path}.final"),
        priority=_integer(raw.get("priority", 0), f"{path}.priority"),
        enabled=_boolean(raw.get("enabled", True), f"{path}.enabled"),
    )


def _destinations(raw: Sequence[object], path: str, known: Collection[str]) -> tuple[str, ...]:
    names: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or item not in known:
            listed = ", ".join(sorted(known)) or "none are configured"
            raise ConfigError(
                f"{path}[{index}]: unknown destination {item!r}; known destinations: {listed} "
                "(fix the name or add it under destinations:)"
            )
        if item not in names:
            names.append(item)
    return tuple(names)


def _load_match(raw: object, path: str) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of conditions, got {_kind(raw)}")
    conditions: list[Condition] = []
    for name, value in raw.items():
        where = f"{path}.{name}"
        if name == "time":
            conditions.extend(_load_time(value, where))
        elif name in CONTEXT_FIELDS:
            test = _value_test(value, where, SOURCES if name == "source" else None)
            conditions.append(ValueCondition(name, name, test))
        else:
            tag, label = _attribute(name, where)
            test = _value_test(value, where, None)
            if _is_sequence(tag) and not isinstance(test, Present):
                raise ConfigError(f"{where}: {label} is a sequence; use {{present: ...}}")
            conditions.append(ValueCondition(label, tag, test))
    return tuple(conditions)


def _value_test(raw: object, path: str, allowed: tuple[str, ...] | None) -> ValueTest:
    """Parse one value form: scalar, list, or a one-key mapping (equals/one_of/regex/...)."""
    if isinstance(raw, list | tuple):
        if not raw:
            raise ConfigError(f"{path}: empty list; list at least one value")
        return OneOf(tuple(_scalar(v, f"{path}[{i}]", allowed) for i, v in enumerate(raw)))
    if not isinstance(raw, Mapping):
        return OneOf((_scalar(raw, path, allowed),))
    if len(raw) != 1 or next(iter(raw)) not in TEST_KEYS:
        raise ConfigError(f"{path}: use exactly one of {', '.join(TEST_KEYS)}; got {list(raw)}")
    form, arg = next(iter(raw.items()))
    where = f"{path}.{form}"
    if form == "equals":
        return OneOf((_scalar(arg, where, allowed),))
    if form == "one_of":
        if not isinstance(arg, list | tuple) or not arg:
            raise ConfigError(f"{where}: expected a non-empty list of values, got {_kind(arg)}")
        return _value_test(arg, where, allowed)
    if form == "present":
        return Present(_boolean(arg, where))
    if form == "not":
        return Not(_value_test(arg, where, allowed))
    if not isinstance(arg, str):
        raise ConfigError(f"{where}: expected a quoted regular expression, got {_kind(arg)}")
    try:
        return Regex(re.compile(arg))
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {arg!r}: {exc}") from None


def _scalar(raw: object, path: str, allowed: tuple[str, ...] | None) -> str:
    if isinstance(raw, bool):
        raise ConfigError(f'{path}: YAML read {raw} as a boolean; quote the value, e.g. "NO"')
    if not isinstance(raw, str | int | float):
        raise ConfigError(f"{path}: expected a string or number, got {_kind(raw)}")
    text = str(raw)
    if allowed is not None and text not in allowed:
        raise ConfigError(f"{path}: unknown value {text!r}; use one of {', '.join(allowed)}")
    return text


def _attribute(name: object, where: str) -> tuple[int, str]:
    if not isinstance(name, str):
        raise ConfigError(f'{where}: quote hex tags ("00100010"); YAML read this key as a number')
    found = _HEX_TAG.fullmatch(name.strip())
    if found:
        group, element, packed = found.groups()
        tag = int(packed or group + element, 16)
    elif name in keyword_dict:
        tag = keyword_dict[name]
    else:
        close = difflib.get_close_matches(name, keyword_dict.keys(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "check the spelling"
        raise ConfigError(
            f"{where}: unknown DICOM keyword {name!r}; {hint} (a condition is a DICOM keyword, "
            "a hex tag, calling_ae, called_ae, source, site or time)"
        )
    if tag >> 16 in _NOT_ROUTABLE_GROUPS:
        raise ConfigError(f"{where}: pixel data and item tags cannot be used for routing")
    return tag, keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private and unknown tags have no dictionary VR
        return False


def _load_time(raw: object, path: str) -> list[Condition]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of days, hours, timezone, got {_kind(raw)}")
    _check_keys(raw, path, TIME_KEYS)
    if "days" not in raw and "hours" not in raw:
        raise ConfigError(f"{path}: give days, hours or both")
    tz_name = raw.get("timezone", "UTC")
    tz = _timezone(tz_name, f"{path}.timezone")
    conditions: list[Condition] = []
    if "days" in raw:
        conditions.append(DaysCondition(_days(raw["days"], f"{path}.days"), tz, str(tz_name)))
    if "hours" in raw:
        start, end = _hours(raw["hours"], f"{path}.hours")
        conditions.append(HoursCondition(start, end, tz, str(tz_name)))
    return conditions


def _timezone(raw: object, path: str) -> tzinfo:
    if raw == "UTC":  # needs no time zone database
        return UTC
    if isinstance(raw, str):
        try:
            return ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    close = difflib.get_close_matches(str(raw), available_timezones(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "use an IANA name like Europe/Berlin"
    raise ConfigError(f"{path}: unknown time zone {raw!r}; {hint}")


def _days(raw: object, path: str) -> frozenset[int]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{path}: expected a non-empty list of days like [sat, sun]")
    days: set[int] = set()
    for index, item in enumerate(items):
        name = item.strip().lower() if isinstance(item, str) else ""
        if name not in DAY_NAMES and name not in _FULL_DAYS:
            raise ConfigError(f"{path}[{index}]: unknown day {item!r}; use {', '.join(DAY_NAMES)}")
        days.add(DAY_NAMES.index(name[:3]))
    return frozenset(days)


def _hours(raw: object, path: str) -> tuple[int, int]:
    found = _HOURS.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if found is None:
        raise ConfigError(f'{path}: expected a quoted window "HH:MM-HH:MM", got {raw!r}')
    start_h, start_m, end_h, end_m = (int(part) for part in found.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if max(start_m, end_m) > 59 or start >= 1440 or end > 1440:
        raise ConfigError(f"{path}: {raw!r} is not a time window between 00:00 and 24:00")
    if start == end:
        raise ConfigError(f'{path}: the window is empty; use "00:00-24:00" for the whole day')
    return start, end


def _check_keys(raw: Mapping[object, object], path: str, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")


def _boolean(raw: object, path: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{path}: expected true or false, got {raw!r}")
    return raw


def _integer(raw: object, path: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(f"{path}: expected a whole number, got {raw!r}")
    return raw


def _kind(raw: object) -> str:
    return "nothing" if raw is None else f"{type(raw).__name__} {raw!r}"[:80]
