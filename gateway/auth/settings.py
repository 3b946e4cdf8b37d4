"""Typed `auth` settings: who may call us (inbound) and how we prove who we are (outbound).

Inbound is the top-level `auth` section (`mode: builtin` or `mode: oidc`); outbound is the
`auth` mapping of a `dicomweb` destination (`type: client_credentials` or `type: bearer`).
Every error names the key path and says how to fix it, like the rest of gateway/config.py.
Secrets are never part of the settings: only the name of the environment variable or the
file that holds them, read when a token is needed (so a rotated secret file is picked up).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.config_values import optional_text as _optional_text
from gateway.config_values import resolve_path as _resolve
from gateway.config_values import text as _text
from gateway.exceptions import ConfigError

DEFAULT_KEY_FILE = "data/auth/signing-key.jwk.json"
# The signature algorithms a JWT may use (gateway/auth/jwt.py enforces them). Here, not there,
# so reading the config does not import joserfc and cryptography (~11 MB resident).
ASYMMETRIC_ALGORITHMS = (
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltinAuth:
    """The gateway is its own issuer (`dicom-gateway token`); the embedded default."""

    issuer: str | None = None  # default: urn:dicom-gateway:<node.ae_title>
    key_file: str = DEFAULT_KEY_FILE  # relative to the config file's folder
    mode: Literal["builtin"] = "builtin"


@dataclass(frozen=True, slots=True, kw_only=True)
class OidcAuth:
    """Tokens come from an external OpenID Connect issuer (Keycloak, Entra ID, Cognito...)."""

    issuer: str
    audience: str
    jwks_url: str | None = None  # default: jwks_uri from the issuer's discovery document
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    audience_claim: str = "aud"  # Cognito access tokens carry the app client in client_id
    scope_prefix: str = ""  # Cognito resource-server scopes look like "<identifier>/<scope>"
    jwks_max_age: float = 3600.0  # keys are fetched again after this long
    jwks_min_refresh_interval: float = 10.0  # at most one unknown-kid refresh per interval
    http_timeout: float = 5.0
    verify: bool | str = True  # TLS verification for discovery and JWKS: bool or CA bundle
    mode: Literal["oidc"] = "oidc"


InboundAuth = BuiltinAuth | OidcAuth


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentialsAuth:
    """OAuth2 client credentials grant (RFC 6749 §4.4) against `token_url`."""

    token_url: str
    client_id: str
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    scope: str | None = None
    audience: str | None = None
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    timeout: float = 30.0
    verify: bool | str | None = None  # None: the destination's own `verify`
    type: Literal["client_credentials"] = "client_credentials"


@dataclass(frozen=True, slots=True, kw_only=True)
class BearerAuth:
    """A static bearer token a peer handed out, from an environment variable or a file."""

    token_env: str | None = None
    token_file: Path | None = None
    type: Literal["bearer"] = "bearer"


OutboundAuth = ClientCredentialsAuth | BearerAuth


def parse_inbound_auth(raw: Mapping[str, Any], key: str = "auth") -> InboundAuth:
    """Validate the top-level `auth` section."""
    mode = raw.get("mode", "builtin")
    if mode == "builtin":
        _no_unknown(raw, key, {"mode", "issuer", "key_file"})
        issuer = raw.get("issuer")
        if issuer is not None:
            issuer = _text(raw, key, "issuer")
        return BuiltinAuth(
            issuer=issuer,
            key_file=_text(raw, key, "key_file") if "key_file" in raw else DEFAULT_KEY_FILE,
        )
    if mode == "oidc":
        _no_unknown(
            raw,
            key,
            {
                "mode",
                "issuer",
                "audience",
                "jwks_url",
                "algorithms",
                "audience_claim",
                "scope_prefix",
                "jwks_max_age",
                "jwks_min_refresh_interval",
                "http_timeout",
                "verify",
            },
        )
        issuer = _url(raw, key, "issuer", required=True)
        assert issuer is not None
        algorithms = raw.get("algorithms", list(ASYMMETRIC_ALGORITHMS))
        if (
            not isinstance(algorithms, list)
            or not algorithms
            or any(a not in ASYMMETRIC_ALGORITHMS for a in algorithms)
        ):
            raise ConfigError(
                f"{key}.algorithms must be a list of signature algorithms from "
                f"{', '.join(ASYMMETRIC_ALGORITHMS)} (never none or HS*)"
            )
        audience_claim = raw.get("audience_claim", "aud")
        if audience_claim not in ("aud", "client_id", "azp"):
            raise ConfigError(
                f"{key}.audience_claim is {audience_claim!r}; use aud (default), client_id "
                "(Cognito access tokens) or azp"
            )
        scope_prefix = raw.get("scope_prefix", "")
        if not isinstance(scope_prefix, str):
            raise ConfigError(f"{key}.scope_prefix must be text, e.g. 'dicom-gateway/'")
        return OidcAuth(
            issuer=issuer,  # compared with `iss` exactly (Auth0's ends with "/", Keycloak's not)
            audience=_text(raw, key, "audience"),
            jwks_url=_url(raw, key, "jwks_url", required=False),
            algorithms=tuple(algorithms),
            audience_claim=audience_claim,
            scope_prefix=scope_prefix,
            jwks_max_age=_number(raw, key, "jwks_max_age", 3600.0, minimum=1),
            jwks_min_refresh_interval=_number(
                raw, key, "jwks_min_refresh_interval", 10.0, minimum=0
            ),
            http_timeout=_number(raw, key, "http_timeout", 5.0, minimum=0.1),
            verify=_verify(raw, key, True),
        )
    raise ConfigError(f"{key}.mode is {mode!r}; use builtin (the gateway issues tokens) or oidc")


def parse_outbound_auth(raw: Mapping[str, Any], key: str, base_dir: Path) -> OutboundAuth:
    """Validate a `dicomweb` destination's `auth` mapping."""
    kind = raw.get("type")
    if kind == "client_credentials":
        _no_unknown(
            raw,
            key,
            {
                "type",
                "token_url",
                "client_id",
                "client_secret_env",
                "client_secret_file",
                "scope",
                "audience",
                "token_auth_method",
                "timeout",
                "verify",
            },
        )
        secret_env, secret_file = _one_source(raw, key, "client_secret_env", "client_secret_file")
        method = raw.get("token_auth_method", "client_secret_basic")
        if method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigError(
                f"{key}.token_auth_method is {method!r}; use client_secret_basic (default) "
                "or client_secret_post"
            )
        token_url = _url(raw, key, "token_url", required=True)
        assert token_url is not None
        return ClientCredentialsAuth(
            token_url=token_url,
            client_id=_text(raw, key, "client_id"),
            client_secret_env=secret_env,
            client_secret_file=None if secret_file is None else _resolve(secret_file, base_dir),
            scope=_optional_text(raw, key, "scope"),
            audience=_optional_text(raw, key, "audience"),
            token_auth_method=method,
            timeout=_number(raw, key, "timeout", 30.0, minimum=0.1),
            verify=_verify(raw, key, None),
        )
    if kind == "bearer":
        _no_unknown(raw, key, {"type", "token_env", "token_file"})
        token_env, token_file = _one_source(raw, key, "token_env", "token_file")
        return BearerAuth(
            token_env=token_env,
            token_file=None if token_file is None else _resolve(token_file, base_dir),
        )
    raise ConfigError(
        f"{key}.type is {kind!r}; use client_credentials (OAuth2 token endpoint) "
        "or bearer (a static token from token_env or token_file)"
    )


def _one_source(
    raw: Mapping[str, Any], key: str, env_key: str, file_key: str
) -> tuple[str | None, str | None]:
    env = raw.get(env_key)
    file = raw.get(file_key)
    if (env is None) == (file is None):
        raise ConfigError(
            f"{key}: give exactly one of {env_key} (an environment variable name) or "
            f"{file_key} (a file holding the value); never put the secret itself in the config"
        )
    if env is not None and (not isinstance(env, str) or not _ENV_NAME.fullmatch(env)):
        raise ConfigError(
            f"{key}.{env_key} must be the name of an environment variable, e.g. CLOUD_SECRET"
        )
    if file is not None and (not isinstance(file, str) or not file):
        raise ConfigError(f"{key}.{file_key} must be a file path")
    return env, file


def _url(raw: Mapping[str, Any], key: str, name: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{key}.{name} is required")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}.{name} must be a URL")
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return value  # a local test or sidecar issuer; never over the network in clear text
    raise ConfigError(
        f"{key}.{name} is {value!r}; it must be an https:// URL "
        "(http:// is accepted only for 127.0.0.1/localhost)"
    )


def _verify(raw: Mapping[str, Any], key: str, default: bool | None) -> Any:
    value = raw.get("verify", default)
    if value is not None and not isinstance(value, bool | str):
        raise ConfigError(f"{key}.verify must be true, false or a CA bundle path")
    return value
