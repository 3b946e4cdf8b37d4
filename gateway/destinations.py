"""The `destinations` section: where instances go and how each kind is configured.

Each destination has a `type` (`dicomweb` for STOW-RS, `dimse` for C-STORE), batching limits,
worker count and a retry policy for the store-and-forward queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.auth.settings import OutboundAuth, parse_outbound_auth
from gateway.config_values import TlsSettings
from gateway.config_values import ae_title as _ae_title
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.config_values import text as _text
from gateway.config_values import tls_settings as _tls
from gateway.exceptions import ConfigError
from gateway.health_config import DESTINATION_KEYS


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = 20
    max_age_hours: float = 72.0
    initial_backoff: float = 5.0
    max_backoff: float = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DicomwebDestination:
    name: str
    url: str
    timeout: float = 60.0
    max_batch_bytes: int = 64 * 1024 * 1024
    max_batch_instances: int = 100
    workers: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    auth: OutboundAuth | None = None
    verify: bool | str = True
    type: Literal["dicomweb"] = "dicomweb"


@dataclass(frozen=True, slots=True, kw_only=True)
class DimseDestination:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str | None = None
    max_batch_instances: int = 200
    max_batch_bytes: int = 512 * 1024 * 1024
    workers: int = 1
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    tls: TlsSettings | None = None
    type: Literal["dimse"] = "dimse"


Destination = DicomwebDestination | DimseDestination


def parse_destinations(raw: object, node_ae: str, base_dir: Path) -> dict[str, Destination]:
    """Validate the `destinations` mapping; errors name `destinations.NAME.key`."""
    items = _mapping(raw, "destinations")
    result: dict[str, Destination] = {}
    for name, value in items.items():
        key = f"destinations.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(f"{key}: destination names use letters, digits, '_', '.', '-'")
        entry = _mapping(value, key)
        entry = {k: v for k, v in entry.items() if k not in DESTINATION_KEYS}  # health_config.py
        kind = entry.get("type")
        retry = _retry(entry.get("retry", {}), f"{key}.retry")
        workers = int(_number(entry, key, "workers", 1, minimum=1))
        if kind == "dicomweb":
            _no_unknown(
                entry,
                key,
                {
                    "type",
                    "url",
                    "timeout",
                    "max_batch_bytes",
                    "max_batch_instances",
                    "workers",
                    "retry",
                    "auth",
                    "verify",
                },
            )
            url = _text(entry, key, "url", None)
            if not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{key}.url is {url!r}; give the DICOMweb base URL, "
                    "e.g. https://archive.example/dicomweb"
                )
            auth = entry.get("auth")
            if auth is not None:
                auth = parse_outbound_auth(_mapping(auth, f"{key}.auth"), f"{key}.auth", base_dir)
            verify = entry.get("verify", True)
            if not isinstance(verify, bool | str):
                raise ConfigError(f"{key}.verify must be true, false or a CA bundle path")
            result[name] = DicomwebDestination(
                name=name,
                url=url.rstrip("/"),
                retry=retry,
                workers=workers,
                auth=auth,
                verify=verify,
                timeout=_number(entry, key, "timeout", 60.0, minimum=1),
                max_batch_bytes=int(
                    _number(entry, key, "max_batch_bytes", 64 * 2**20, minimum=1024)
                ),
                max_batch_instances=int(_number(entry, key, "max_batch_instances", 100, minimum=1)),
            )
        elif kind == "dimse":
            _no_unknown(
                entry,
                key,
                {
                    "type",
                    "ae_title",
                    "host",
                    "port",
                    "calling_ae_title",
                    "max_batch_instances",
                    "max_batch_bytes",
                    "workers",
                    "acse_timeout",
                    "dimse_timeout",
                    "network_timeout",
                    "retry",
                    "tls",
                },
            )
            result[name] = DimseDestination(
                name=name,
                retry=retry,
                workers=workers,
                ae_title=_ae_title(entry.get("ae_title"), f"{key}.ae_title"),
                host=_text(entry, key, "host", None),
                port=int(_number(entry, key, "port", None, minimum=1, maximum=65535)),
                calling_ae_title=_ae_title(
                    entry.get("calling_ae_title", node_ae), f"{key}.calling_ae_title"
                ),
                max_batch_instances=int(_number(entry, key, "max_batch_instances", 200, minimum=1)),
                max_batch_bytes=int(
                    _number(entry, key, "max_batch_bytes", 512 * 2**20, minimum=1024)
                ),
                acse_timeout=_number(entry, key, "acse_timeout", 30.0, minimum=1),
                dimse_timeout=_number(entry, key, "dimse_timeout", 120.0, minimum=1),
                network_timeout=_number(entry, key, "network_timeout", 60.0, minimum=1),
                tls=_tls(entry.get("tls"), f"{key}.tls", base_dir),
            )
        else:
            raise ConfigError(f"{key}.type is {kind!r}; use dicomweb (STOW-RS) or dimse (C-STORE)")
    return result


def _retry(raw: object, key: str) -> RetryPolicy:
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"max_attempts", "max_age_hours", "initial_backoff", "max_backoff"})
    return RetryPolicy(
        max_attempts=int(_number(entry, key, "max_attempts", 20, minimum=1)),
        max_age_hours=_number(entry, key, "max_age_hours", 72.0, minimum=0.001),
        initial_backoff=_number(entry, key, "initial_backoff", 5.0, minimum=0.01),
        max_backoff=_number(entry, key, "max_backoff", 900.0, minimum=0.01),
    )
