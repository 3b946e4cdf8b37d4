"""The routing engine and its Decision: matching, ordering, targets, JSON and explain()."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from gateway.exceptions import RuleError
from gateway.routing import (
    DEFAULT_RULE,
    Decision,
    RoutingContext,
    RuleOutcome,
    Target,
    evaluate,
    load_rules,
)

DESTINATIONS = ("cloud", "pacs", "bucket")
WEDNESDAY_NOON = datetime(2024, 6, 5, 12, 0, tzinfo=UTC)


def context(**changes: Any) -> RoutingContext:
    values: dict[str, Any] = {
        "source": "dimse",
        "calling_ae": "CT1",
        "called_ae": "GATEWAY",
        "site": "berlin",
        "received_at": WEDNESDAY_NOON,
    }
    return RoutingContext(**{**values, **changes})


def header(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def raw(ds: Dataset, tag: int, vr: str | None, value: bytes) -> Dataset:
    """Add an element as the network would deliver it: undecoded until first read."""
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


def route(
    routes: list[dict[str, Any]],
    ds: Dataset | None = None,
    ctx: RoutingContext | None = None,
    default: tuple[str, ...] | None = None,
) -> Decision:
    rules = load_rules(routes, DESTINATIONS)
    return evaluate(rules, ds if ds is not None else Dataset(), ctx or context(), default=default)


def outcome(
    match: dict[str, Any], ds: Dataset | None = None, ctx: RoutingContext | None = None
) -> RuleOutcome:
    (result,) = route([{"name": "r", "match": match, "forward": ["cloud"]}], ds, ctx).outcomes
    return result


def matches(
    match: dict[str, Any], ds: Dataset | None = None, ctx: RoutingContext | None = None
) -> bool:
    return outcome(match, ds, ctx).matched


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> RoutingContext:
    return context(received_at=datetime(year, month, day, hour, minute, tzinfo=UTC))


# --- attribute conditions ---------------------------------------------------------------------


def test_missing_or_empty_match_matches_everything() -> None:
    decision = route(
        [{"name": "a", "forward": ["cloud"]}, {"name": "b", "match": {}, "forward": ["pacs"]}]
    )
    assert [o.matched for o in decision.outcomes] == [True, True]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CT", True),
        (["MR", "CT"], True),
        ({"equals": "CT"}, True),
        ({"one_of": ["CT", "MR"]}, True),
        ("MR", False),
        ("ct", False),  # exact, case-sensitive
        (["MR", "US"], False),
        ({"one_of": ["PT"]}, False),
    ],
)
def test_equals_and_one_of(value: object, expected: bool) -> None:
    assert matches({"Modality": value}, header(Modality="CT")) is expected


def test_values_are_compared_after_stripping_padding() -> None:
    assert matches({"StationName": "ST1"}, header(StationName="ST1  "))
    assert matches({"(0009,1002)": "HELLO"}, raw(Dataset(), 0x00091002, "UN", b"HELLO\x00"))


def test_numbers_compare_numerically_for_numeric_vrs_only() -> None:
    assert matches({"SeriesNumber": 3}, header(SeriesNumber="3"))
    assert matches({"SliceThickness": 1.5}, header(SliceThickness="1.50"))
    assert matches({"Rows": "512"}, header(Rows=512))
    assert not matches({"SliceThickness": "abc"}, header(SliceThickness="1.50"))
    assert not matches({"StationName": 1}, header(StationName="01"))


def test_multi_valued_attributes_match_if_any_value_matches() -> None:
    ds = header(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert matches({"ImageType": "PRIMARY"}, ds)
    assert matches({"ImageType": {"regex": "AX.*"}}, ds)
    miss = outcome({"ImageType": "SECONDARY"}, ds)
    assert (miss.matched, miss.seen) == (False, "ORIGINAL\\PRIMARY\\AXIAL")


def test_person_names_compare_as_their_string_form() -> None:
    ds = header(PatientName="Doe^John")
    assert matches({"PatientName": "Doe^John"}, ds)
    assert matches({"PatientName": {"regex": r"Doe\^.*"}}, ds)
    assert outcome({"PatientName": "Doe"}, ds).seen == "Doe^John"


def test_regex_must_match_the_whole_value() -> None:
    ds = header(StationName="CT12")
    assert matches({"StationName": {"regex": "CT[0-9]+"}}, ds)
    assert not matches({"StationName": {"regex": "CT1"}}, ds)
    assert not matches({"StationName": {"regex": "T12"}}, ds)
    assert outcome({"StationName": {"regex": "MR.*"}}, ds).wanted == "regex 'MR.*'"


def test_present_and_absent() -> None:
    with_value, empty, missing = header(AccessionNumber="A1"), header(AccessionNumber=""), Dataset()
    assert matches({"AccessionNumber": {"present": True}}, with_value)
    assert not matches({"AccessionNumber": {"present": True}}, empty)
    assert not matches({"AccessionNumber": {"present": True}}, missing)
    assert matches({"AccessionNumber": {"present": False}}, missing)
    assert matches({"AccessionNumber": {"present": False}}, empty)
    miss = outcome({"AccessionNumber": {"present": False}}, with_value)
    assert (miss.seen, miss.wanted) == ("A1", "absent")


def test_sequences_are_present_when_they_have_items() -> None:
    full = header(ReferencedSeriesSequence=Sequence([Dataset()]))
    empty = header(ReferencedSeriesSequence=Sequence([]))
    assert matches({"ReferencedSeriesSequence": {"present": True}}, full)
    miss = outcome({"ReferencedSeriesSequence": {"present": True}}, empty)
    assert (miss.matched, miss.seen) == (False, "<sequence of 0 items>")


def test_not() -> None:
    assert matches({"Modality": {"not": "CT"}}, header(Modality="MR"))
    assert matches({"Modality": {"not": "CT"}}, Dataset())  # absent is not CT
    miss = outcome({"Modality": {"not": ["CT", "MR"]}}, header(Modality="CT"))
    assert (miss.seen, miss.wanted) == ("CT", "not one of CT, MR")


@pytest.mark.parametrize("key", ["00080060", "(0008,0060)", "0008,0060"])
def test_hex_tags(key: str) -> None:
    assert matches({key: "CT"}, header(Modality="CT"))
    assert outcome({key: "CT"}, header(Modality="MR")).failed_condition == "Modality"


def test_private_tags() -> None:
    ds = Dataset()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "FAST")
    assert matches({"(0009,1001)": "FAST"}, ds)
    assert outcome({"00091001": "SLOW"}, ds).failed_condition == "(0009,1001)"
    binary = raw(Dataset(), 0x00091003, "UN", b"\xff\xfe")
    miss = outcome({"00091003": "x"}, binary)
    assert (miss.matched, miss.seen) == (False, "<binary, 2 bytes>")
    assert matches({"00091003": {"present": True}}, binary)


# --- missing and bad data ---------------------------------------------------------------------


def test_absent_and_empty_values_are_reported() -> None:
    assert outcome({"Modality": "CT"}).seen == "<absent>"
    assert outcome({"Modality": "CT"}, header(Modality="")).seen == "<empty>"


def test_undecodable_values_fail_the_condition_without_raising() -> None:
    ds = raw(header(Modality="CT"), 0x00280010, "US", b"\x01")  # odd length for US
    for test in ("512", {"present": True}, {"present": False}, {"not": "1"}, {"regex": ".*"}):
        miss = outcome({"Rows": test}, ds)
        assert (miss.matched, miss.failed_condition, miss.seen) == (False, "Rows", "<unreadable>")
    assert matches({"Modality": "CT"}, ds)  # the rest of the header still routes


def test_pixel_data_is_never_read() -> None:
    # A PixelData element that would raise if decoded proves evaluation never touches it.
    ds = raw(header(Modality="CT"), 0x7FE00010, "US", b"\x01")
    decision = route(
        [
            {
                "name": "a",
                "match": {"Modality": "CT", "Rows": {"present": False}},
                "forward": ["cloud"],
            }
        ],
        ds,
    )
    assert decision.outcomes[0].matched
    assert isinstance(ds._dict[Tag(0x7FE00010)], RawDataElement)


def test_seen_values_are_truncated_to_64_characters() -> None:
    seen = outcome({"ImageComments": "x"}, header(ImageComments="A" * 100)).seen
    assert seen == "A" * 61 + "..."
    assert seen is not None and len(seen) == 64
    exact = outcome({"ImageComments": "x"}, header(ImageComments="B" * 64)).seen
    assert exact == "B" * 64


def test_the_first_failing_condition_is_recorded_in_written_order() -> None:
    match = {"Modality": ["CT", "MR"], "calling_ae": "CT2", "StationName": "X"}
    miss = outcome(match, header(Modality="MR"))
    assert (miss.failed_condition, miss.seen, miss.wanted) == ("calling_ae", "CT1", "one of CT2")


# --- context conditions -----------------------------------------------------------------------


def test_calling_and_called_ae_are_stripped_and_exact() -> None:
    ctx = context(calling_ae=" CT1  ", called_ae="GATEWAY ")
    assert matches({"calling_ae": "CT1", "called_ae": ["OTHER", "GATEWAY"]}, ctx=ctx)
    assert not matches({"calling_ae": "ct1"}, ctx=ctx)
    miss = outcome({"called_ae": "OTHER"}, ctx=ctx)
    assert (miss.failed_condition, miss.seen) == ("called_ae", "GATEWAY")


def test_missing_context_values_are_absent() -> None:
    ctx = context(source="stowrs", calling_ae=None, called_ae=None, site=None)
    miss = outcome({"calling_ae": "CT1"}, ctx=ctx)
    assert (miss.matched, miss.seen) == (False, "<absent>")
    assert matches({"calling_ae": {"present": False}, "site": {"present": False}}, ctx=ctx)
    assert outcome({"site": "x"}, ctx=context(site="  ")).seen == "<empty>"


def test_source_and_site() -> None:
    assert matches({"source": "dimse"})
    assert matches({"source": ["stowrs", "dimse"]})
    assert matches({"source": "stowrs"}, ctx=context(source="stowrs"))
    assert not matches({"source": "stowrs"})
    assert matches({"site": ["munich", "berlin"]})
    assert matches({"site": {"regex": "ber.*"}})
    assert outcome({"site": "munich"}).seen == "berlin"


def test_context_rejects_caller_mistakes() -> None:
    with pytest.raises(RuleError, match="timezone-aware"):
        context(received_at=datetime(2024, 6, 5, 12, 0))
    with pytest.raises(RuleError, match="unknown source 'stow-rs'"):
        context(source="stow-rs")


# --- time windows -----------------------------------------------------------------------------


def test_days() -> None:
    weekend = {"time": {"days": ["sat", "sun"]}}
    assert matches(weekend, ctx=at(2024, 6, 8, 10))  # Saturday
    assert matches(weekend, ctx=at(2024, 6, 9, 23, 59))  # Sunday
    miss = outcome(weekend, ctx=at(2024, 6, 10, 0, 0))  # Monday
    assert (miss.failed_condition, miss.seen, miss.wanted) == (
        "time.days",
        "mon",
        "one of sat, sun (UTC)",
    )


def test_hours_within_a_day_are_half_open() -> None:
    office = {"time": {"hours": "08:00-18:00"}}
    assert matches(office, ctx=at(2024, 6, 5, 8, 0))
    assert matches(office, ctx=at(2024, 6, 5, 17, 59))
    miss = outcome(office, ctx=at(2024, 6, 5, 18, 0))
    assert (miss.failed_condition, miss.seen, miss.wanted) == (
        "time.hours",
        "18:00",
        "08:00-18:00 UTC",
    )
    assert not matches(office, ctx=at(2024, 6, 5, 7, 59))


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        (18, 0, True),
        (23, 30, True),
        (0, 0, True),
        (7, 59, True),
        (8, 0, False),
        (12, 0, False),
        (17, 59, False),
    ],
)
def test_hours_wrap_past_midnight(hour: int, minute: int, expected: bool) -> None:
    assert matches({"time": {"hours": "18:00-08:00"}}, ctx=at(2024, 6, 5, hour, minute)) is expected


def test_hours_until_24_00() -> None:
    assert matches({"time": {"hours": "20:00-24:00"}}, ctx=at(2024, 6, 5, 23, 59))
    assert not matches({"time": {"hours": "20:00-24:00"}}, ctx=at(2024, 6, 5, 0, 0))


def test_days_and_hours_are_checked_independently() -> None:
    # Saturday-night window: Sunday 02:00 matches (it is a Sunday at night); Monday 02:00 does not.
    window = {"time": {"days": ["sat", "sun"], "hours": "18:00-08:00"}}
    assert matches(window, ctx=at(2024, 6, 9, 2))
    assert outcome(window, ctx=at(2024, 6, 10, 2)).failed_condition == "time.days"
    assert outcome(window, ctx=at(2024, 6, 8, 12)).failed_condition == "time.hours"


def test_timezone_shifts_the_local_time_and_day() -> None:
    berlin = {"time": {"days": ["mon"], "hours": "00:00-02:00", "timezone": "Europe/Berlin"}}
    sunday_late_utc = at(2024, 6, 9, 23, 30)  # Monday 01:30 in Berlin (CEST, UTC+2)
    assert matches(berlin, ctx=sunday_late_utc)
    assert not matches({"time": {"days": ["mon"]}}, ctx=sunday_late_utc)
    miss = outcome(berlin, ctx=at(2024, 6, 10, 1, 0))  # 03:00 in Berlin
    assert (miss.seen, miss.wanted) == ("03:00", "00:00-02:00 Europe/Berlin")


def test_receive_time_in_any_offset_is_converted() -> None:
    new_york = timezone(timedelta(hours=-4))
    ctx = context(
        received_at=datetime(2024, 6, 5, 8, 0, tzinfo=new_york)
    )  # 12:00 UTC, 14:00 Berlin
    assert matches({"time": {"hours": "14:00-15:00", "timezone": "Europe/Berlin"}}, ctx=ctx)
    assert matches({"time": {"hours": "12:00-13:00"}}, ctx=ctx)


def test_dst_spring_forward() -> None:
    # 2024-03-31 Berlin: 02:00 CET jumps to 03:00 CEST, so 02:00-03:00 never happens that night.
    gap = {"time": {"hours": "02:00-03:00", "timezone": "Europe/Berlin"}}
    assert outcome(gap, ctx=at(2024, 3, 31, 0, 59)).seen == "01:59"
    assert outcome(gap, ctx=at(2024, 3, 31, 1, 0)).seen == "03:00"
    office = {"time": {"hours": "08:00-18:00", "timezone": "Europe/Berlin"}}
    assert not matches(office, ctx=at(2024, 3, 30, 6, 30))  # 07:30 CET
    assert matches(office, ctx=at(2024, 3, 31, 6, 30))  # 08:30 CEST


def test_dst_fall_back() -> None:
    # 2024-10-27 Berlin: 02:30 happens twice (CEST, then CET); both are inside the window.
    window = {"time": {"hours": "02:00-03:00", "timezone": "Europe/Berlin"}}
    assert matches(window, ctx=at(2024, 10, 27, 0, 30))
    assert matches(window, ctx=at(2024, 10, 27, 1, 30))
    assert not matches(window, ctx=at(2024, 10, 27, 2, 0))  # 03:00 CET


# --- rule order, final, disabled, targets, default --------------------------------------------

ROUTES: list[dict[str, Any]] = [
    {"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud", "pacs"], "priority": 1},
    {
        "name": "urgent",
        "match": {"StationName": "ER"},
        "forward": ["pacs", "bucket"],
        "priority": 5,
    },
    {"name": "stop", "match": {"calling_ae": "CT1"}, "forward": ["bucket"], "final": True},
    {"name": "after", "forward": ["cloud"]},
    {"name": "off", "forward": ["cloud"], "enabled": False},
]


def test_targets_are_deduplicated_first_rule_wins_highest_priority_counts() -> None:
    decision = route(ROUTES, header(Modality="CT", StationName="ER"))
    assert decision.targets == (
        Target("cloud", "ct", 1),
        Target("pacs", "ct", 5),
        Target("bucket", "urgent", 5),
    )
    assert not decision.held


def test_final_stops_later_rules() -> None:
    decision = route(ROUTES, header(Modality="MR"))
    assert decision.stopped_by == "stop"
    assert [(o.rule, o.matched, o.skipped) for o in decision.outcomes] == [
        ("ct", False, False),
        ("urgent", False, False),
        ("stop", True, False),
        ("after", False, True),
        ("off", False, True),
    ]
    assert decision.outcomes[3].failed_condition == "stopped by final rule stop"
    assert decision.outcomes[4].failed_condition == "stopped by final rule stop"
    assert decision.targets == (Target("bucket", "stop", 0),)


def test_a_final_rule_that_misses_does_not_stop() -> None:
    decision = route(ROUTES, header(Modality="MR"), context(calling_ae="MR1"))
    assert decision.stopped_by is None
    assert decision.outcomes[3].matched
    assert decision.targets == (Target("cloud", "after", 0),)


def test_disabled_rules_are_recorded_as_skipped() -> None:
    decision = route([{"name": "off", "forward": ["cloud"], "enabled": False}], default=("pacs",))
    (skipped,) = decision.outcomes
    assert (skipped.matched, skipped.skipped, skipped.failed_condition) == (False, True, "disabled")
    assert decision.targets == (Target("pacs", DEFAULT_RULE, 0),)


def test_outcomes_carry_the_rule_settings() -> None:
    first = route(ROUTES, header(Modality="CT")).outcomes[0]
    assert (first.forward, first.final, first.priority) == (("cloud", "pacs"), False, 1)


def test_no_match_uses_the_default() -> None:
    routes = [{"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud"]}]
    decision = route(routes, header(Modality="MR"), default=("pacs", "bucket"))
    assert decision.targets == (Target("pacs", "<default>", 0), Target("bucket", "<default>", 0))
    assert (decision.held, decision.stopped_by) == (False, None)


def test_no_match_without_default_is_held() -> None:
    decision = route(
        [{"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud"]}], header(Modality="MR")
    )
    assert (decision.held, decision.targets) == (True, ())


def test_no_rules_at_all() -> None:
    assert route([]).held
    assert route([], default=("pacs",)).targets == (Target("pacs", "<default>", 0),)


def test_a_match_ignores_the_default() -> None:
    decision = route([{"name": "all", "forward": ["cloud"]}], default=("pacs",))
    assert decision.targets == (Target("cloud", "all", 0),)


def test_evaluation_does_not_change_with_repetition() -> None:
    rules = load_rules(ROUTES, DESTINATIONS)
    ds, ctx = header(Modality="CT"), context()
    assert evaluate(rules, ds, ctx, default=None) == evaluate(rules, ds, ctx, default=None)


# --- Decision: JSON and explain ---------------------------------------------------------------


def test_json_round_trip() -> None:
    for decision in (
        route(ROUTES, header(Modality="MR", StationName="ER")),
        route(ROUTES, header(Modality="CT"), context(calling_ae=None)),
        route(
            [{"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud"]}], default=("pacs",)
        ),
        route([]),
    ):
        text = decision.to_json()
        assert json.loads(text)["version"] == 1
        assert Decision.from_json(text) == decision


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "outcomes": [], "targets": [], "held": true, "stopped_by": null}',
        '{"version": 1, "outcomes": [], "targets": [], "held": "yes", "stopped_by": null}',
        '{"version": 1, "outcomes": [1], "targets": [], "held": true, "stopped_by": null}',
        '{"version": 1, "outcomes": [], "targets": [{"destination": "a", "rule": "r"}],'
        ' "held": false, "stopped_by": null}',
        '{"version": 1, "outcomes": [],'
        ' "targets": [{"destination": "a", "rule": "r", "priority": true}],'
        ' "held": false, "stopped_by": null}',
        '{"version": 1, "outcomes": [], "targets": [], "held": true, "stopped_by": 3}',
    ],
)
def test_malformed_json_is_a_rule_error(text: str) -> None:
    with pytest.raises(RuleError, match="stored routing decision is malformed"):
        Decision.from_json(text)


def test_outcome_with_bad_forward_is_rejected() -> None:
    data = json.loads(route([{"name": "a", "forward": ["cloud"]}]).to_json())
    data["outcomes"][0]["forward"] = [1]
    with pytest.raises(RuleError, match="forward"):
        Decision.from_json(json.dumps(data))


def test_explain_lines() -> None:
    decision = route(ROUTES, header(Modality="MR"))
    assert decision.explain() == [
        "rule ct: no match: Modality is 'MR', wanted one of CT",
        "rule urgent: no match: StationName is <absent>, wanted one of ER",
        "rule stop: matched -> bucket (final)",
        "rule after: not evaluated: stopped by final rule stop",
        "rule off: not evaluated: stopped by final rule stop",
        "deliver to: bucket (rule stop, priority 0)",
    ]


def test_explain_after_storage_matches_the_original() -> None:
    decision = route(ROUTES, header(Modality="CT", StationName="ER"), context(calling_ae="MR1"))
    assert Decision.from_json(decision.to_json()).explain() == decision.explain()
    assert decision.explain() == [
        "rule ct: matched -> cloud, pacs",
        "rule urgent: matched -> pacs, bucket",
        "rule stop: no match: calling_ae is 'MR1', wanted one of CT1",
        "rule after: matched -> cloud",
        "rule off: not evaluated: disabled",
        "deliver to: cloud (rule ct, priority 1), pacs (rule ct, priority 5), "
        "bucket (rule urgent, priority 5)",
    ]


def test_explain_default_and_hold() -> None:
    routes = [{"name": "ct", "match": {"Modality": "CT"}, "forward": ["cloud"]}]
    assert route(routes, default=("pacs",)).explain() == [
        "rule ct: no match: Modality is <absent>, wanted one of CT",
        "no rule matched: routing_default -> pacs",
    ]
    assert route(routes).explain()[-1] == "no rule matched: held (routing_default is hold)"


def test_explain_time_and_unreadable() -> None:
    night = {
        "name": "night",
        "match": {"time": {"hours": "18:00-08:00", "timezone": "Europe/Berlin"}},
        "forward": ["cloud"],
    }
    rows = {"name": "rows", "match": {"Rows": 512}, "forward": ["cloud"]}
    ds = raw(Dataset(), 0x00280010, "US", b"\x01")
    assert route([night, rows], ds).explain()[:2] == [
        "rule night: no match: time.hours is '14:00', wanted 18:00-08:00 Europe/Berlin",
        "rule rows: no match: Rows is <unreadable>, wanted one of 512",
    ]


def test_a_real_header_read_without_pixels() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = dcmread(path, stop_before_pixels=True)
    routes = [
        {
            "name": "ct",
            "match": {"Modality": "CT", "PatientName": {"regex": ".+"}},
            "forward": ["pacs"],
        },
        {"name": "mr", "match": {"Modality": "MR"}, "forward": ["cloud"]},
    ]
    decision = route(routes, ds)
    assert decision.targets == (Target("pacs", "ct", 0),)
    assert decision.explain()[1] == "rule mr: no match: Modality is 'CT', wanted one of MR"
