"""The rule loader: what it builds from YAML-shaped data, and every error it reports."""

from __future__ import annotations

import re
from datetime import UTC
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

import gateway.routing
from gateway.exceptions import ConfigError
from gateway.routing import Rule, load_default, load_rules
from gateway.routing.engine import (
    DaysCondition,
    HoursCondition,
    Not,
    OneOf,
    Present,
    Regex,
    ValueCondition,
)

DESTINATIONS = ("cloud", "pacs", "bucket")


def one(match: Any = None, **keys: Any) -> Rule:
    """Load a single rule named "r" that forwards to cloud unless told otherwise."""
    raw: dict[str, Any] = {"name": "r", "forward": ["cloud"], **keys}
    if match is not None:
        raw["match"] = match
    (rule,) = load_rules([raw], DESTINATIONS)
    return rule


def condition(match: dict[str, Any]) -> ValueCondition:
    (cond,) = one(match).conditions
    assert isinstance(cond, ValueCondition)
    return cond


def config_error(raw_routes: object, destinations: tuple[str, ...] = DESTINATIONS) -> str:
    with pytest.raises(ConfigError) as info:
        load_rules(raw_routes, destinations)
    return str(info.value)


def match_error(match: object) -> str:
    return config_error([{"name": "r", "match": match, "forward": ["cloud"]}])


# --- what the loader builds -------------------------------------------------------------------


def test_defaults_of_a_minimal_rule() -> None:
    assert one() == Rule("r", (), ("cloud",), final=False, priority=0, enabled=True)


def test_explicit_rule_keys_are_kept() -> None:
    rule = one(final=True, priority=7, enabled=False, forward=["pacs", "cloud"])
    assert (rule.final, rule.priority, rule.enabled, rule.forward) == (
        True,
        7,
        False,
        ("pacs", "cloud"),
    )


def test_forward_accepts_one_name_and_drops_repeats() -> None:
    assert one(forward="pacs").forward == ("pacs",)
    assert one(forward=["pacs", "cloud", "pacs"]).forward == ("pacs", "cloud")


def test_missing_routes_means_no_rules() -> None:
    assert load_rules(None, DESTINATIONS) == ()
    assert load_rules([], DESTINATIONS) == ()


def test_empty_match_has_no_conditions() -> None:
    assert one({}).conditions == ()


def test_value_forms() -> None:
    assert condition({"Modality": "CT"}).test == OneOf(("CT",))
    assert condition({"Modality": ["CT", "MR"]}).test == OneOf(("CT", "MR"))
    assert condition({"Modality": {"equals": "CT"}}).test == OneOf(("CT",))
    assert condition({"Modality": {"one_of": ["CT", "MR"]}}).test == OneOf(("CT", "MR"))
    assert condition({"SeriesNumber": 3}).test == OneOf(("3",))
    assert condition({"SliceThickness": 1.5}).test == OneOf(("1.5",))
    assert condition({"Modality": {"present": True}}).test == Present(True)
    assert condition({"Modality": {"present": False}}).test == Present(False)
    assert condition({"Modality": {"not": ["CT"]}}).test == Not(OneOf(("CT",)))
    assert condition({"Modality": {"not": {"present": True}}}).test == Not(Present(True))
    regex = condition({"StationName": {"regex": "CT[0-9]+"}}).test
    assert isinstance(regex, Regex)
    assert regex.pattern == re.compile("CT[0-9]+")


@pytest.mark.parametrize(
    "key", ["00080060", "(0008,0060)", "0008,0060", "(0008, 0060)", "0008,0060"]
)
def test_hex_tags_resolve_to_the_keyword(key: str) -> None:
    cond = condition({key: "CT"})
    assert (cond.subject, cond.label) == (0x00080060, "Modality")


def test_private_tags_are_labelled_by_tag() -> None:
    cond = condition({"(0009,10aa)": "ACME"})
    assert (cond.subject, cond.label) == (0x000910AA, "(0009,10AA)")


def test_keyword_condition() -> None:
    cond = condition({"StationName": "ST1"})
    assert (cond.subject, cond.label) == (0x00081010, "StationName")


@pytest.mark.parametrize("field", ["calling_ae", "called_ae", "source", "site"])
def test_context_conditions(field: str) -> None:
    value = "stowrs" if field == "source" else "X"
    cond = condition({field: value})
    assert (cond.label, cond.subject, cond.test) == (field, field, OneOf((value,)))


def test_sequences_may_be_tested_for_presence() -> None:
    assert condition({"ReferencedSeriesSequence": {"present": True}}).test == Present(True)


def test_conditions_keep_the_written_order() -> None:
    rule = one(
        {"calling_ae": "CT1", "Modality": "CT", "time": {"days": ["mon"], "hours": "08:00-09:00"}}
    )
    labels = [cond.label for cond in rule.conditions]
    assert labels == ["calling_ae", "Modality", "time.days", "time.hours"]


def test_time_conditions() -> None:
    days, hours = one(
        {"time": {"days": ["Sat", "sunday"], "hours": "18:00-08:00", "timezone": "Europe/Berlin"}}
    ).conditions
    assert isinstance(days, DaysCondition)
    assert isinstance(hours, HoursCondition)
    assert days.days == frozenset({5, 6})
    assert (hours.start, hours.end) == (18 * 60, 8 * 60)
    assert days.tz == ZoneInfo("Europe/Berlin")
    assert hours.tz_name == "Europe/Berlin"


def test_time_defaults_to_utc_and_accepts_a_single_day_and_24_00() -> None:
    days, hours = one({"time": {"days": "mon", "hours": "8:00 - 24:00"}}).conditions
    assert isinstance(days, DaysCondition)
    assert isinstance(hours, HoursCondition)
    assert (days.days, days.tz, days.tz_name) == (frozenset({0}), UTC, "UTC")
    assert (hours.start, hours.end) == (480, 1440)


def test_the_documented_example_loads() -> None:
    config = yaml.safe_load(
        """
        routes:
          - name: ct-mr-to-cloud-and-pacs
            match: {Modality: [CT, MR], calling_ae: CT1}
            forward: [cloud, pacs]
          - name: after-hours-to-telerad
            match: {time: {days: [sat, sun], hours: "18:00-08:00", timezone: Europe/Berlin}}
            forward: [cloud]
            final: true
          - name: everything-else
            forward: [pacs]
        routing_default: hold
        """
    )
    rules = load_rules(config["routes"], DESTINATIONS)
    assert [rule.name for rule in rules] == [
        "ct-mr-to-cloud-and-pacs",
        "after-hours-to-telerad",
        "everything-else",
    ]
    assert load_default(config["routing_default"], DESTINATIONS) is None


def test_load_default() -> None:
    assert load_default(None, DESTINATIONS) is None
    assert load_default("hold", DESTINATIONS) is None
    assert load_default("pacs", DESTINATIONS) == ("pacs",)
    assert load_default(["pacs", "cloud", "pacs"], DESTINATIONS) == ("pacs", "cloud")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            ["pacs", "nowhere"],
            "routing_default[1]: unknown destination 'nowhere'; "
            "known destinations: bucket, cloud, pacs",
        ),
        ("holdd", "routing_default[0]: unknown destination 'holdd'"),
        ([], "routing_default: expected 'hold' or a list of destinations"),
        ({"a": 1}, "routing_default: expected 'hold' or a list of destinations"),
    ],
)
def test_load_default_errors(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_default(raw, DESTINATIONS)


def test_key_prefix_appears_in_messages() -> None:
    with pytest.raises(ConfigError, match=re.escape("sites.berlin.routes[0].forward[0]")):
        load_rules([{"name": "r", "forward": ["x"]}], DESTINATIONS, key="sites.berlin.routes")
    with pytest.raises(ConfigError, match=re.escape("sites.berlin.default[0]")):
        load_default(["x"], DESTINATIONS, key="sites.berlin.default")


def test_public_surface_is_sorted_and_resolvable() -> None:
    names = gateway.routing.__all__
    # isort order, as ruff keeps it: CONSTANTS, then Classes, then functions
    assert names == sorted(names, key=lambda name: (not name.isupper(), name[0].islower(), name))
    assert all(hasattr(gateway.routing, name) for name in names)


# --- every configuration error names its key path ------------------------------------------


@pytest.mark.parametrize(
    ("raw_routes", "message"),
    [
        ({"name": "r"}, "routes: expected a list of rules"),
        (["r"], "routes[0]: expected a mapping"),
        (
            [{"name": "r", "forward": ["cloud"], "forwad": ["pacs"]}],
            "routes[0]: unknown key 'forwad'; "
            "allowed keys: enabled, final, forward, match, name, priority",
        ),
        ([{"forward": ["cloud"]}], "routes[0].name: missing"),
        ([{"name": 5, "forward": ["cloud"]}], "routes[0].name: missing"),
        ([{"name": " r", "forward": ["cloud"]}], "routes[0].name: ' r': remove surrounding spaces"),
        ([{"name": "<default>", "forward": ["cloud"]}], "routes[0].name: '<default>'"),
        (
            [{"name": "a", "forward": ["cloud"]}, {"name": "a", "forward": ["pacs"]}],
            "routes[1].name: duplicate rule name 'a' (already used by routes[0])",
        ),
        ([{"name": "r"}], "routes[0].forward: expected a list of destinations, got nothing"),
        ([{"name": "r", "forward": []}], "routes[0].forward: expected a list of destinations"),
        (
            [{"name": "r", "forward": {"cloud": 1}}],
            "routes[0].forward: expected a list of destinations",
        ),
        (
            [{"name": "r", "forward": ["cloud", "clod"]}],
            "routes[0].forward[1]: unknown destination 'clod'; "
            "known destinations: bucket, cloud, pacs",
        ),
        ([{"name": "r", "forward": [3]}], "routes[0].forward[0]: unknown destination 3"),
        (
            [{"name": "r", "forward": ["cloud"], "final": "yes"}],
            "routes[0].final: expected true or false",
        ),
        (
            [{"name": "r", "forward": ["cloud"], "enabled": 1}],
            "routes[0].enabled: expected true or false",
        ),
        (
            [{"name": "r", "forward": ["cloud"], "priority": "high"}],
            "routes[0].priority: expected a whole number",
        ),
        (
            [{"name": "r", "forward": ["cloud"], "priority": True}],
            "routes[0].priority: expected a whole number",
        ),
        (
            [{"name": "r", "forward": ["cloud"], "priority": 1.5}],
            "routes[0].priority: expected a whole number",
        ),
    ],
)
def test_rule_errors(raw_routes: object, message: str) -> None:
    assert message in config_error(raw_routes)


def test_unknown_destination_when_none_are_configured() -> None:
    assert "known destinations: none are configured" in config_error(
        [{"name": "r", "forward": ["cloud"]}], ()
    )


def test_errors_point_at_the_right_rule() -> None:
    routes = [
        {"name": "ok", "forward": ["cloud"]},
        {"name": "bad", "forward": ["cloud"], "match": {"Modalty": "CT"}},
    ]
    assert config_error(routes).startswith("routes[1].match.Modalty: ")


@pytest.mark.parametrize(
    ("match", "message"),
    [
        (["Modality"], "routes[0].match: expected a mapping of conditions"),
        (
            {"Modalty": "CT"},
            "routes[0].match.Modalty: unknown DICOM keyword 'Modalty'; did you mean Modality",
        ),
        (
            {"xyzzy": "CT"},
            "routes[0].match.xyzzy: unknown DICOM keyword 'xyzzy'; check the spelling",
        ),
        ({32776: "Doe"}, "routes[0].match.32776: quote hex tags"),
        (
            {"PixelData": {"present": True}},
            "routes[0].match.PixelData: pixel data and item tags cannot be used",
        ),
        ({"7FE00010": {"present": True}}, "routes[0].match.7FE00010: pixel data"),
        (
            {"(FFFE,E000)": {"present": True}},
            "routes[0].match.(FFFE,E000): pixel data and item tags",
        ),
        (
            {"ReferencedSeriesSequence": "x"},
            "routes[0].match.ReferencedSeriesSequence: "
            "ReferencedSeriesSequence is a sequence; use {present: ...}",
        ),
        (
            {"Modality": True},
            "routes[0].match.Modality: YAML read True as a boolean; quote the value",
        ),
        ({"Modality": [False]}, "routes[0].match.Modality[0]: YAML read False as a boolean"),
        ({"Modality": None}, "routes[0].match.Modality: expected a string or number, got nothing"),
        ({"Modality": []}, "routes[0].match.Modality: empty list"),
        ({"Modality": [["CT"]]}, "routes[0].match.Modality[0]: expected a string or number"),
        (
            {"Modality": {"equals": "CT", "regex": "C."}},
            "routes[0].match.Modality: use exactly one of equals, not, one_of, present, regex",
        ),
        ({"Modality": {"equal": "CT"}}, "routes[0].match.Modality: use exactly one of"),
        (
            {"Modality": {"equals": ["CT"]}},
            "routes[0].match.Modality.equals: expected a string or number",
        ),
        (
            {"Modality": {"one_of": "CT"}},
            "routes[0].match.Modality.one_of: expected a non-empty list",
        ),
        (
            {"Modality": {"one_of": [1, None]}},
            "routes[0].match.Modality.one_of[1]: expected a string or number",
        ),
        (
            {"Modality": {"regex": "C[T"}},
            "routes[0].match.Modality.regex: invalid regular expression 'C[T'",
        ),
        (
            {"Modality": {"regex": 5}},
            "routes[0].match.Modality.regex: expected a quoted regular expression",
        ),
        (
            {"Modality": {"present": "yes"}},
            "routes[0].match.Modality.present: expected true or false",
        ),
        (
            {"Modality": {"not": {"regex": "("}}},
            "routes[0].match.Modality.not.regex: invalid regular expression",
        ),
        (
            {"source": "stow"},
            "routes[0].match.source: unknown value 'stow'; use one of dimse, stowrs",
        ),
        ({"source": ["dimse", "STOWRS"]}, "routes[0].match.source[1]: unknown value 'STOWRS'"),
        ({"calling_ae": True}, "routes[0].match.calling_ae: YAML read True as a boolean"),
        ({"time": "weekends"}, "routes[0].match.time: expected a mapping of days, hours, timezone"),
        (
            {"time": {"day": ["sat"]}},
            "routes[0].match.time: unknown key 'day'; allowed keys: days, hours, timezone",
        ),
        ({"time": {"timezone": "UTC"}}, "routes[0].match.time: give days, hours or both"),
        (
            {"time": {"days": ["sat"], "timezone": "Europe/Berln"}},
            "routes[0].match.time.timezone: unknown time zone 'Europe/Berln'; "
            "did you mean Europe/Berlin",
        ),
        (
            {"time": {"days": ["sat"], "timezone": "../etc/passwd"}},
            "routes[0].match.time.timezone: unknown time zone",
        ),
        (
            {"time": {"days": ["sat"], "timezone": 5}},
            "routes[0].match.time.timezone: unknown time zone 5",
        ),
        (
            {"time": {"days": ["sat", "sonday"]}},
            "routes[0].match.time.days[1]: unknown day 'sonday'; "
            "use mon, tue, wed, thu, fri, sat, sun",
        ),
        ({"time": {"days": []}}, "routes[0].match.time.days: expected a non-empty list of days"),
        ({"time": {"days": [1]}}, "routes[0].match.time.days[0]: unknown day 1"),
        (
            {"time": {"hours": 1080}},
            'routes[0].match.time.hours: expected a quoted window "HH:MM-HH:MM", got 1080',
        ),
        ({"time": {"hours": "18-08"}}, "routes[0].match.time.hours: expected a quoted window"),
        (
            {"time": {"hours": "25:00-08:00"}},
            "routes[0].match.time.hours: '25:00-08:00' is not a time window",
        ),
        (
            {"time": {"hours": "24:00-08:00"}},
            "routes[0].match.time.hours: '24:00-08:00' is not a time window",
        ),
        (
            {"time": {"hours": "08:60-09:00"}},
            "routes[0].match.time.hours: '08:60-09:00' is not a time window",
        ),
        (
            {"time": {"hours": "08:00-24:01"}},
            "routes[0].match.time.hours: '08:00-24:01' is not a time window",
        ),
        (
            {"time": {"hours": "08:00-08:00"}},
            'routes[0].match.time.hours: the window is empty; use "00:00-24:00"',
        ),
    ],
)
def test_match_errors(match: object, message: str) -> None:
    assert message in match_error(match)


def test_frozen_config_shapes_are_accepted() -> None:
    # A typed config layer may hand over tuples and read-only mappings instead of lists and dicts.
    raw = MappingProxyType(
        {"name": "r", "match": MappingProxyType({"Modality": ("CT", "MR")}), "forward": ("pacs",)}
    )
    (rule,) = load_rules((raw,), DESTINATIONS)
    assert rule.forward == ("pacs",)
    assert load_default(("cloud",), DESTINATIONS) == ("cloud",)
