"""Typed, frozen settings read from one YAML file (plus `${ENV}` expansion).

Every error names the key path (`destinations.cloud.url`) and says how to fix it, because the
person reading it is an integration engineer at a console, not a Python developer.
Relative `file://` and `sqlite:///` paths are resolved against the config file's folder so a
service starts the same way whatever its working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.audit_settings import AuditSettings, parse_audit
from gateway.auth.settings import parse_inbound_auth
from gateway.commitment.settings import CommitmentSettings, parse_storage_commitment
from gateway.config_values import TlsSettings
from gateway.config_values import ae_title as _ae_title
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.config_values import resolve_path as _resolve
from gateway.config_values import text as _text
from gateway.config_values import tls_settings as _tls
from gateway.destinations import (
    Destination,
    DicomwebDestination,
    DimseDestination,
    MoveDestination,
    RetryPolicy,
    S3Destination,
    parse_destinations,
    parse_move_destinations,
)
from gateway.exceptions import ConfigError
from gateway.health_config import HealthSettings, parse_health
from gateway.routing.rules import Rule, load_default, load_rules
from gateway.spool.s3url import parse_s3_url
from gateway.telemetry_config import (
    LoggingSettings,
    TelemetrySettings,
    parse_logging,
    parse_telemetry,
)
from gateway.web.limits import HttpLimits, parse_http_limits

# Re-exported: other modules import these settings types from gateway.config.
__all__ = [
    "Destination",
    "DicomwebDestination",
    "DimseDestination",
    "RetryPolicy",
    "S3Destination",
    "Settings",
    "TlsSettings",
    "load_settings",
    "parse_settings",
]

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DuplicatePolicy = Literal["overwrite", "ignore", "reject"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    ae_title: str
    dimse: Endpoint
    http: Endpoint | None
    site: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    spool: str
    database: str
    retention_hours: float = 24.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowedCaller:
    ae_title: str
    host: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DimseSettings:
    allowed_callers: tuple[AllowedCaller, ...] | None = None  # None: any caller
    require_called_ae: bool = True
    max_associations: int = 16
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 60.0
    max_pdu: int = 262_144
    tls: TlsSettings | None = None
    storage_commitment: CommitmentSettings | None = None  # None: the SOP class is not offered
    max_find_results: int = 1000  # C-FIND matches answered; more: 0xA700 after these
    move_destinations: Mapping[str, MoveDestination] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    lease_seconds: float = 300.0
    poll_interval: float = 0.5
    linger: float = 0.1  # longest a due instance waits for more of its study to batch with it
    quiet: float = 0.03  # send at once after this long without a new arrival


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestSettings:
    duplicate_policy: DuplicatePolicy = "overwrite"


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsSettings:
    """Which browser origins may call the HTTP API (empty: no CORS headers at all)."""

    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """Behaviour of the HTTP front end (where it listens is `node.http`)."""

    cors: CorsSettings = field(default_factory=CorsSettings)
    base_url: str | None = None  # public URL for RetrieveURL/BulkDataURI behind a proxy
    max_results: int = 1000  # QIDO-RS page size cap
    max_parts: int = 10_000  # STOW-RS parts per request
    limits: HttpLimits = field(default_factory=HttpLimits)  # sizes and timeouts, see web/limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    source: Path | None
    node: NodeSettings
    storage: StorageSettings
    dimse: DimseSettings
    destinations: Mapping[str, Destination]
    routes: tuple[Rule, ...]
    routing_default: tuple[str, ...] | None
    delivery: DeliverySettings
    ingest: IngestSettings
    auth: Mapping[str, Any]
    http: HttpSettings = field(default_factory=HttpSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read, expand and validate a YAML config file."""
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    return parse_settings(
        _expand_env(raw, "config"), base_dir=config_path.parent.resolve(), source=config_path
    )


def parse_settings(raw: object, *, base_dir: Path, source: Path | None = None) -> Settings:
    """Validate an already-parsed mapping into `Settings`."""
    top = _mapping(raw, "config")
    _no_unknown(
        top,
        "config",
        {
            "node",
            "storage",
            "dimse",
            "destinations",
            "routes",
            "routing_default",
            "delivery",
            "ingest",
            "auth",
            "http",
            "logging",
            "telemetry",
            "health",
            "audit",
        },
    )
    node = _node(top.get("node", {}))
    storage = _storage(top.get("storage", {}), base_dir)
    dimse = _dimse(top.get("dimse", {}), base_dir)
    destinations = parse_destinations(top.get("destinations", {}), node.ae_title, base_dir)
    routes = load_rules(top.get("routes", []), destinations.keys())
    default = load_default(top.get("routing_default", "hold"), destinations.keys())
    delivery_raw = _mapping(top.get("delivery", {}), "delivery")
    _no_unknown(delivery_raw, "delivery", {"lease_seconds", "poll_interval", "linger", "quiet"})
    delivery = DeliverySettings(
        lease_seconds=_number(delivery_raw, "delivery", "lease_seconds", 300.0, minimum=5),
        poll_interval=_number(delivery_raw, "delivery", "poll_interval", 0.5, minimum=0.01),
        linger=_number(delivery_raw, "delivery", "linger", 0.1, minimum=0),
        quiet=_number(delivery_raw, "delivery", "quiet", 0.03, minimum=0.001),
    )
    ingest_raw = _mapping(top.get("ingest", {}), "ingest")
    _no_unknown(ingest_raw, "ingest", {"duplicate_policy"})
    policy = ingest_raw.get("duplicate_policy", "overwrite")
    if policy not in ("overwrite", "ignore", "reject"):
        raise ConfigError(
            f"ingest.duplicate_policy is {policy!r}; use one of overwrite, ignore, reject"
        )
    auth = _mapping(top.get("auth", {"mode": "builtin"}), "auth")
    parse_inbound_auth(auth)  # validated now; gateway/auth/factory.py reads the typed form
    return Settings(
        source=source,
        node=node,
        storage=storage,
        dimse=dimse,
        destinations=destinations,
        routes=routes,
        routing_default=default,
        delivery=delivery,
        ingest=IngestSettings(duplicate_policy=policy),
        auth=auth,
        http=_http(top.get("http", {})),
        logging=parse_logging(top.get("logging", {})),
        telemetry=parse_telemetry(top.get("telemetry", {})),
        health=parse_health(top.get("health", {}), top.get("destinations", {}), destinations),
        audit=parse_audit(top.get("audit", {}), base_dir),
    )


def _http(raw: object) -> HttpSettings:
    http = _mapping(raw, "http")
    _no_unknown(http, "http", {"cors", "base_url", "max_results", "max_parts", "limits"})
    cors = _mapping(http.get("cors", {}), "http.cors")
    _no_unknown(cors, "http.cors", {"allow_origins", "allow_credentials", "max_age"})
    origins = cors.get("allow_origins", [])
    if isinstance(origins, str):
        origins = [origins]
    if not isinstance(origins, list) or not all(
        isinstance(o, str) and (o == "*" or re.fullmatch(r"https?://[^/\s]+", o)) for o in origins
    ):
        raise ConfigError(
            "http.cors.allow_origins must be a list of origins such as "
            "https://viewer.example.org (scheme://host[:port], no path) or '*'"
        )
    credentials = cors.get("allow_credentials", False)
    if not isinstance(credentials, bool):
        raise ConfigError("http.cors.allow_credentials must be true or false")
    if credentials and "*" in origins:
        raise ConfigError(
            "http.cors.allow_credentials cannot be true with allow_origins '*'; "
            "list the viewer origins explicitly"
        )
    base_url = http.get("base_url")
    if base_url is not None and (
        not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(
            "http.base_url must be the public URL clients use, e.g. https://gateway.example/dicomweb"
        )
    return HttpSettings(
        cors=CorsSettings(
            allow_origins=tuple(origins),
            allow_credentials=credentials,
            max_age=int(_number(cors, "http.cors", "max_age", 600, minimum=0)),
        ),
        base_url=base_url.rstrip("/") if base_url else None,
        max_results=int(_number(http, "http", "max_results", 1000, minimum=1, maximum=100_000)),
        max_parts=int(_number(http, "http", "max_parts", 10_000, minimum=1)),
        limits=parse_http_limits(http.get("limits"), "http.limits"),
    )


def _node(raw: object) -> NodeSettings:
    node = _mapping(raw, "node")
    _no_unknown(node, "node", {"ae_title", "dimse", "http", "site"})
    ae_title = _ae_title(node.get("ae_title", "GATEWAY"), "node.ae_title")
    dimse = _endpoint(node.get("dimse", {}), "node.dimse", default_port=11112)
    http = (
        None
        if node.get("http", {}) is None
        else _endpoint(node.get("http", {}), "node.http", default_port=8080)
    )
    site = node.get("site")
    if site is not None and not isinstance(site, str):
        raise ConfigError("node.site must be a text name such as 'main-campus'")
    return NodeSettings(ae_title=ae_title, dimse=dimse, http=http, site=site)


def _storage(raw: object, base_dir: Path) -> StorageSettings:
    storage = _mapping(raw, "storage")
    _no_unknown(storage, "storage", {"spool", "database", "retention_hours"})
    spool = _text(storage, "storage", "spool", "file://./data/spool")
    database = _text(storage, "storage", "database", "sqlite:///./data/gateway.db")
    if spool.startswith("file://"):
        spool = "file://" + str(_resolve(spool[len("file://") :], base_dir))
    elif spool.startswith("s3://"):
        parse_s3_url(spool)  # options and bucket name checked now, not at the first C-STORE
    else:
        raise ConfigError(f"storage.spool is {spool!r}; use file://PATH or s3://BUCKET/PREFIX")
    if database.startswith("sqlite:///"):
        database = "sqlite:///" + str(_resolve(database[len("sqlite:///") :], base_dir))
    elif not database.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"storage.database is {database!r}; use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    retention = _number(storage, "storage", "retention_hours", 24.0, minimum=0)
    return StorageSettings(spool=spool, database=database, retention_hours=retention)


def _dimse(raw: object, base_dir: Path) -> DimseSettings:
    dimse = _mapping(raw, "dimse")
    _no_unknown(
        dimse,
        "dimse",
        {
            "allowed_callers",
            "require_called_ae",
            "max_associations",
            "acse_timeout",
            "dimse_timeout",
            "network_timeout",
            "max_pdu",
            "tls",
            "storage_commitment",
            "max_find_results",
            "move_destinations",
        },
    )
    callers_raw = dimse.get("allowed_callers")
    callers: tuple[AllowedCaller, ...] | None = None
    if callers_raw is not None:
        if not isinstance(callers_raw, list):
            raise ConfigError("dimse.allowed_callers must be a list of {ae_title, host}")
        items = []
        for index, item in enumerate(callers_raw):
            key = f"dimse.allowed_callers[{index}]"
            entry = _mapping(item, key)
            _no_unknown(entry, key, {"ae_title", "host"})
            host = entry.get("host")
            if host is not None and not isinstance(host, str):
                raise ConfigError(f"{key}.host must be an IP address or host name")
            items.append(
                AllowedCaller(
                    ae_title=_ae_title(entry.get("ae_title"), f"{key}.ae_title"), host=host
                )
            )
        callers = tuple(items)
    require_called = dimse.get("require_called_ae", True)
    if not isinstance(require_called, bool):
        raise ConfigError("dimse.require_called_ae must be true or false")
    return DimseSettings(
        allowed_callers=callers,
        require_called_ae=require_called,
        max_associations=int(_number(dimse, "dimse", "max_associations", 16, minimum=1)),
        acse_timeout=_number(dimse, "dimse", "acse_timeout", 30.0, minimum=1),
        dimse_timeout=_number(dimse, "dimse", "dimse_timeout", 120.0, minimum=1),
        network_timeout=_number(dimse, "dimse", "network_timeout", 60.0, minimum=1),
        max_pdu=int(_number(dimse, "dimse", "max_pdu", 262_144, minimum=4096)),
        tls=_tls(dimse.get("tls"), "dimse.tls", base_dir),
        storage_commitment=parse_storage_commitment(
            dimse.get("storage_commitment"), "dimse.storage_commitment", base_dir
        ),
        max_find_results=int(
            _number(dimse, "dimse", "max_find_results", 1000, minimum=1, maximum=100_000)
        ),
        move_destinations=parse_move_destinations(dimse.get("move_destinations"), base_dir),
    )


def _endpoint(raw: object, key: str, *, default_port: int) -> Endpoint:
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"host", "port"})
    return Endpoint(
        host=_text(entry, key, "host", "0.0.0.0"),  # noqa: S104 - a listener
        port=int(_number(entry, key, "port", default_port, minimum=0, maximum=65535)),
    )


def _expand_env(value: object, key: str) -> object:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name, default)
            if found is None:
                raise ConfigError(
                    f"{key} uses ${{{name}}} but the environment variable "
                    f"{name} is not set; set it or write ${{{name}:-default}}"
                )
            return found

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value
