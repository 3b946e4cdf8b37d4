"""The `dimse.storage_commitment` section: policy, waiting time, where to send reports.

The address a report goes to is configuration only (`peers`, by AE title), never taken from
the association that asked: the requesting AE title is matched against this list, and a
request from a title without an entry is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config_values import RemoteAE, remote_aes
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.destinations import RetryPolicy, parse_retry
from gateway.exceptions import ConfigError

CommitmentPolicy = Literal["stored", "delivered"]


CommitmentPeer = RemoteAE
"""Where the N-EVENT-REPORT for one requesting AE title is sent."""


def _default_retry() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=1000, max_age_hours=24.0, initial_backoff=5.0, max_backoff=300.0
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentSettings:
    """Storage Commitment Push Model SCP; offered only when the section is present."""

    policy: CommitmentPolicy = "stored"
    timeout: float = 600.0  # how long an instance not (yet) committed is waited for
    peers: Mapping[str, CommitmentPeer] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=_default_retry)
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    poll_interval: float = 1.0  # how often waiting transactions are looked at again


def parse_storage_commitment(raw: object, key: str, base_dir: Path) -> CommitmentSettings | None:
    """Validate `dimse.storage_commitment`; None (the SOP class is not offered) when absent."""
    if raw is None:
        return None
    entry = _mapping(raw, key)
    _no_unknown(
        entry,
        key,
        {"policy", "timeout", "peers", "retry", "acse_timeout", "dimse_timeout", "poll_interval"},
    )
    policy = entry.get("policy", "stored")
    if policy not in ("stored", "delivered"):
        raise ConfigError(
            f"{key}.policy is {policy!r}; use stored (committed once held durably here) or "
            "delivered (committed once every destination acknowledged it)"
        )
    return CommitmentSettings(
        policy=policy,
        timeout=_number(entry, key, "timeout", 600.0, minimum=0),
        peers=remote_aes(entry.get("peers", {}), f"{key}.peers", base_dir),
        retry=parse_retry(entry.get("retry", {}), f"{key}.retry", _default_retry()),
        acse_timeout=_number(entry, key, "acse_timeout", 30.0, minimum=1),
        dimse_timeout=_number(entry, key, "dimse_timeout", 60.0, minimum=1),
        poll_interval=_number(entry, key, "poll_interval", 1.0, minimum=0.05, maximum=60),
    )
