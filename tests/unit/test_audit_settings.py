"""The `audit` section: keep forever by default; never delete without a copy by accident."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_settings
from gateway.exceptions import ConfigError


def test_default_keeps_every_event_forever(tmp_path: Path) -> None:
    audit = parse_settings({}, base_dir=tmp_path).audit
    assert (audit.retention_days, audit.archive_dir, audit.archive) == (None, None, True)


def test_retention_with_an_archive_folder_relative_to_the_config(tmp_path: Path) -> None:
    raw = {"audit": {"retention_days": 3650, "archive_dir": "./audit", "archive_period": "day"}}
    audit = parse_settings(raw, base_dir=tmp_path).audit
    assert audit.retention_days == 3650.0
    assert audit.archive_dir == tmp_path / "audit"
    assert (audit.archive_period, audit.batch_size) == ("day", 1000)


def test_retention_without_an_archive_is_refused_and_names_both_fixes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"audit": {"retention_days": 365}}, base_dir=tmp_path)
    assert "audit.archive_dir" in str(info.value) and "audit.archive: false" in str(info.value)


def test_deleting_without_a_copy_must_be_explicit(tmp_path: Path) -> None:
    raw = {"audit": {"retention_days": 30, "archive": False}}
    audit = parse_settings(raw, base_dir=tmp_path).audit
    assert (audit.archive, audit.archive_dir) == (False, None)


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        ({"retention_days": 0, "archive_dir": "a"}, "audit.retention_days is 0"),
        ({"retention_days": "7y", "archive_dir": "a"}, "audit.retention_days must be a number"),
        ({"archive": "no"}, "audit.archive must be true or false"),
        ({"archive": False, "archive_dir": "a"}, "remove archive_dir"),
        ({"archive_period": "year"}, "use day or month"),
        ({"batch_size": 0}, "audit.batch_size is 0"),
        ({"batch_size": 100_000}, "at most 10000"),
        ({"retention": 30}, "unknown key(s) retention"),
    ],
)
def test_errors_name_the_key(audit: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_settings({"audit": audit}, base_dir=tmp_path)
