"""The `logging:` and `telemetry:` sections of the config file.

Kept apart from gateway/config.py so the observability switches live next to their docs
(docs/observability.md) and config.py only wires them in. Where traces and metrics go is not
here: that is the standard `OTEL_*` environment (gateway/telemetry.py), so the gateway is
configured like every other OpenTelemetry service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config_values import flag as _flag
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.exceptions import ConfigError

LogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingSettings:
    """How log lines look and whether they may carry PHI (patient data beyond UIDs)."""

    format: LogFormat = "text"
    phi: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    """Gateway-side telemetry switches; exporters come from the OTEL_* environment."""

    metrics_public: bool = False  # list /metrics without a token (else scope gateway.admin)


def parse_logging(raw: object) -> LoggingSettings:
    entry = _mapping(raw, "logging")
    _no_unknown(entry, "logging", {"format", "phi"})
    form = entry.get("format", "text")
    if form not in ("text", "json"):
        raise ConfigError(f"logging.format is {form!r}; use text or json")
    return LoggingSettings(format=form, phi=_flag(entry, "logging", "phi"))


def parse_telemetry(raw: object) -> TelemetrySettings:
    entry = _mapping(raw, "telemetry")
    _no_unknown(entry, "telemetry", {"metrics_public"})
    return TelemetrySettings(metrics_public=_flag(entry, "telemetry", "metrics_public"))
