"""The `destinations` section: where instances go and how each kind is configured.

Each destination has a `type` (`dicomweb` for STOW-RS, `dimse` for C-STORE, `s3` for objects in
an S3 bucket), batching limits, worker count and a retry policy for the store-and-forward queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.auth.settings import OutboundAuth, parse_outbound_auth
from gateway.config_values import RemoteAE, TlsSettings, remote_aes
from gateway.config_values import ae_title as _ae_title
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.config_values import text as _text
from gateway.config_values import tls_settings as _tls
from gateway.exceptions import ConfigError
from gateway.health_config import DESTINATION_KEYS
from gateway.s3keys import DEFAULT_KEY_TEMPLATE, check_key_template
from gateway.spool.s3url import S3Location, parse_s3_url
from gateway.transform.settings import TransformSettings, parse_transform


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
    transform: TransformSettings | None = None
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
    transform: TransformSettings | None = None
    type: Literal["dimse"] = "dimse"


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Destination:
    """Objects in an S3 bucket; see docs/configuration.md ("S3 destinations")."""

    name: str
    url: str
    location: S3Location
    endpoint_url: str | None = None
    region: str | None = None
    key_template: str = DEFAULT_KEY_TEMPLATE
    storage_class: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    timeout: float = 60.0
    max_batch_instances: int = 100
    max_batch_bytes: int = 256 * 1024 * 1024
    workers: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transform: TransformSettings | None = None
    type: Literal["s3"] = "s3"


Destination = DicomwebDestination | DimseDestination | S3Destination


MoveDestination = RemoteAE
"""Where a C-MOVE may send: `dimse.move_destinations`, keyed by the Move Destination AE."""


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
        retry = parse_retry(entry.get("retry", {}), f"{key}.retry")
        workers = int(_number(entry, key, "workers", 1, minimum=1))
        transform = parse_transform(entry.get("transform"), f"{key}.transform", base_dir)
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
                    "transform",
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
                transform=transform,
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
                    "transform",
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
                transform=transform,
            )
        elif kind == "s3":
            result[name] = _s3(entry, key, name, retry, workers, transform)
        else:
            raise ConfigError(
                f"{key}.type is {kind!r}; use dicomweb (STOW-RS), dimse (C-STORE) or s3 (bucket)"
            )
    return result


def parse_retry(raw: object, key: str, default: RetryPolicy | None = None) -> RetryPolicy:
    """A `retry:` block; keys left out take `default`'s values (a destination's by default)."""
    base = default or RetryPolicy()
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"max_attempts", "max_age_hours", "initial_backoff", "max_backoff"})
    return RetryPolicy(
        max_attempts=int(_number(entry, key, "max_attempts", base.max_attempts, minimum=1)),
        max_age_hours=_number(entry, key, "max_age_hours", base.max_age_hours, minimum=0.001),
        initial_backoff=_number(entry, key, "initial_backoff", base.initial_backoff, minimum=0.01),
        max_backoff=_number(entry, key, "max_backoff", base.max_backoff, minimum=0.01),
    )


# Storage classes S3 accepts on PutObject; a typo would otherwise fail every upload.
_STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "GLACIER_IR",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")


def _s3(
    entry: dict[str, object],
    key: str,
    name: str,
    retry: RetryPolicy,
    workers: int,
    transform: TransformSettings | None,
) -> S3Destination:
    _no_unknown(
        entry,
        key,
        {
            "type",
            "url",
            "endpoint_url",
            "region",
            "key_template",
            "storage_class",
            "access_key_id_env",
            "secret_access_key_env",
            "session_token_env",
            "timeout",
            "max_batch_instances",
            "max_batch_bytes",
            "workers",
            "retry",
            "transform",
        },
    )
    url = _text(entry, key, "url", None)
    location = parse_s3_url(url, setting=f"{key}.url")
    endpoint = _optional(entry, key, "endpoint_url")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"{key}.endpoint_url is {endpoint!r}; give the S3 endpoint's URL, e.g. "
            "https://s3.eu-west-1.amazonaws.com (leave it out for AWS)"
        )
    region = _optional(entry, key, "region")
    if region is not None and not _REGION.fullmatch(region):
        raise ConfigError(f"{key}.region is {region!r}; give an AWS region such as eu-west-1")
    template = check_key_template(
        _text(entry, key, "key_template", DEFAULT_KEY_TEMPLATE), f"{key}.key_template"
    )
    storage_class = _optional(entry, key, "storage_class")
    if storage_class is not None and storage_class not in _STORAGE_CLASSES:
        raise ConfigError(
            f"{key}.storage_class is {storage_class!r}; use one of "
            f"{', '.join(sorted(_STORAGE_CLASSES))} (or leave it out for the bucket's default)"
        )
    env_names = {
        option: _optional(entry, key, option)
        for option in ("access_key_id_env", "secret_access_key_env", "session_token_env")
    }
    for option, env_name in env_names.items():
        if env_name is not None and not _ENV_NAME.fullmatch(env_name):
            raise ConfigError(
                f"{key}.{option} is {env_name!r}; give the NAME of an environment variable "
                "(letters, digits, '_'), never the secret itself"
            )
    if (env_names["access_key_id_env"] is None) != (env_names["secret_access_key_env"] is None):
        raise ConfigError(
            f"{key}: give both access_key_id_env and secret_access_key_env, or neither "
            "(to use the standard AWS credential chain)"
        )
    if env_names["session_token_env"] is not None and env_names["access_key_id_env"] is None:
        raise ConfigError(
            f"{key}.session_token_env needs access_key_id_env and secret_access_key_env"
        )
    return S3Destination(
        name=name,
        url=url,
        location=location,
        endpoint_url=endpoint,
        region=region,
        key_template=template,
        storage_class=storage_class,
        access_key_id_env=env_names["access_key_id_env"],
        secret_access_key_env=env_names["secret_access_key_env"],
        session_token_env=env_names["session_token_env"],
        retry=retry,
        workers=workers,
        transform=transform,
        timeout=_number(entry, key, "timeout", 60.0, minimum=1),
        max_batch_instances=int(_number(entry, key, "max_batch_instances", 100, minimum=1)),
        max_batch_bytes=int(_number(entry, key, "max_batch_bytes", 256 * 2**20, minimum=1024)),
    )


def _optional(entry: dict[str, object], key: str, name: str) -> str | None:
    return None if entry.get(name) is None else _text(entry, key, name, None)


def parse_move_destinations(raw: object, base_dir: Path) -> dict[str, MoveDestination]:
    """`dimse.move_destinations`: `{AE_TITLE: {host, port, tls}}`."""
    return remote_aes(raw, "dimse.move_destinations", base_dir)
