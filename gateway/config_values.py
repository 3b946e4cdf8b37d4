"""Reading one config value with an error that names its key and how to fix it.

Shared by every settings module (gateway/config.py, gateway/auth/settings.py,
gateway/telemetry_config.py) so a mistake reads the same wherever it is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.dicom.uids import validate_ae_title
from gateway.exceptions import ConfigError, InvalidInputError


def mapping(value: object, key: str) -> dict[str, Any]:
    """`value` as a mapping (None is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping (key: value lines), not {type(value).__name__}")
    return value


def no_unknown(entry: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    """Refuse keys that are not in `allowed` (a typo never falls back to a default)."""
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def text(entry: Mapping[str, Any], key: str, name: str, default: str | None = None) -> str:
    """A required non-empty text value (or `default`)."""
    value = entry.get(name, default)
    if value is None:
        raise ConfigError(f"{key}.{name} is required")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}.{name} must be a non-empty text value")
    return value


def optional_text(entry: Mapping[str, Any], key: str, name: str) -> str | None:
    """A non-empty text value, or None when the key is absent."""
    return None if entry.get(name) is None else text(entry, key, name)


def number(
    entry: Mapping[str, Any],
    key: str,
    name: str,
    default: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A number within bounds; `default` None makes it required."""
    value = entry.get(name, default)
    if value is None:
        raise ConfigError(f"{key}.{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}.{name} must be a number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}.{name} is {value}; it must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}.{name} is {value}; it must be at most {maximum}")
    return float(value)


def flag(entry: Mapping[str, Any], key: str, name: str, default: bool = False) -> bool:
    """A true/false value."""
    value = entry.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name} must be true or false, not {value!r}")
    return value


def resolve_path(path: str, base_dir: Path) -> Path:
    """`path` made absolute against the config file's folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base_dir / candidate).resolve()


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


def tls_settings(raw: object, key: str, base_dir: Path) -> TlsSettings | None:
    """A `tls:` block (cert, key, ca, require_client_cert), or None when absent."""
    if raw is None:
        return None
    entry = mapping(raw, key)
    no_unknown(entry, key, {"cert", "key", "ca", "require_client_cert"})
    ca = entry.get("ca")
    require = entry.get("require_client_cert", False)
    if not isinstance(require, bool):
        raise ConfigError(f"{key}.require_client_cert must be true or false")
    return TlsSettings(
        cert=resolve_path(text(entry, key, "cert", None), base_dir),
        key=resolve_path(text(entry, key, "key", None), base_dir),
        ca=None if ca is None else resolve_path(str(ca), base_dir),
        require_client_cert=require,
    )


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """Another application entity the gateway calls: its AE title and where it listens.

    Configured, never taken from the wire: C-MOVE destinations, storage commitment peers.
    """

    ae_title: str
    host: str
    port: int
    tls: TlsSettings | None = None


def remote_aes(raw: object, key: str, base_dir: Path) -> dict[str, RemoteAE]:
    """A `{AE_TITLE: {host, port, tls}}` table; errors name `key.AE_TITLE.field`."""
    result: dict[str, RemoteAE] = {}
    for name, value in mapping(raw, key).items():
        title = ae_title(name, f"{key}.{name} (an AE title)")
        where = f"{key}.{title}"
        entry = mapping(value, where)
        no_unknown(entry, where, {"host", "port", "tls"})
        result[title] = RemoteAE(
            ae_title=title,
            host=text(entry, where, "host", None),
            port=int(number(entry, where, "port", None, minimum=1, maximum=65535)),
            tls=tls_settings(entry.get("tls"), f"{where}.tls", base_dir),
        )
    return result


def ae_title(value: object, key: str) -> str:
    """An AE title of 1-16 characters without backslash."""
    if not isinstance(value, str):
        raise ConfigError(f"{key} is required: an AE title of 1-16 characters")
    try:
        return validate_ae_title(value)
    except InvalidInputError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
