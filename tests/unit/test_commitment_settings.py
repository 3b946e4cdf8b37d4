"""`dimse.storage_commitment`: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_settings
from gateway.exceptions import ConfigError


def test_absent_means_not_offered_and_defaults_apply(tmp_path: Path) -> None:
    assert parse_settings({}, base_dir=tmp_path).dimse.storage_commitment is None
    settings = parse_settings(
        {"dimse": {"storage_commitment": {"peers": {"CT1": {"host": "10.0.0.5", "port": 104}}}}},
        base_dir=tmp_path,
    )
    commitment = settings.dimse.storage_commitment
    assert commitment is not None
    assert (commitment.policy, commitment.timeout) == ("stored", 600.0)
    assert commitment.peers["CT1"].host == "10.0.0.5" and commitment.peers["CT1"].port == 104
    assert commitment.retry.max_age_hours == 24.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"policy": "archived"}, "dimse.storage_commitment.policy is 'archived'"),
        ({"timeout": -1}, "dimse.storage_commitment.timeout is -1"),
        ({"wait": 5}, "unknown key(s) wait"),
        ({"peers": {"CT1": {"host": "h"}}}, "dimse.storage_commitment.peers.CT1.port is required"),
        ({"peers": {"CT1": {"port": 104}}}, "dimse.storage_commitment.peers.CT1.host is required"),
        ({"peers": {"A" * 17: {"host": "h", "port": 1}}}, "(an AE title)"),
        ({"peers": {"CT1": {"host": "h", "port": 1, "ae": "X"}}}, "unknown key(s) ae"),
        ({"retry": {"max_age_hours": 0}}, "dimse.storage_commitment.retry.max_age_hours"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({"dimse": {"storage_commitment": raw}}, base_dir=tmp_path)
    assert message in str(error.value)
