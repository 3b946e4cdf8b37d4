"""Credentials the gateway presents to DICOMweb destinations (the `auth` of a destination).

`ClientCredentials` runs the OAuth2 client credentials grant with authlib and caches the access
token until shortly before it expires; `StaticBearer` hands out a token an operator put in an
environment variable or a file. Both are called by the STOW-RS sender once per request
(`headers()`) and told when the destination answered 401 (`invalidate()`), after which the
sender retries once with fresh headers. Delivery workers are threads, so the token cache is
guarded by a lock and concurrent workers wait for one token request instead of sending many.

Secrets are read when a token is requested, not when the config is loaded, so a rotated
secret file is picked up without a restart; a missing secret is still reported at start-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx

from gateway.auth.settings import BearerAuth, ClientCredentialsAuth, OutboundAuth
from gateway.exceptions import AuthError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 300.0  # seconds, when the token endpoint does not say (expires_in)
MAX_REFRESH_MARGIN = 60.0  # renew this long before expiry at most (10% of a short lifetime)


class OutboundCredentials(Protocol):
    """What the STOW-RS sender calls: headers per request, invalidate after an HTTP 401."""

    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


def make_outbound_credentials(
    settings: OutboundAuth, *, destination: str, verify: bool | str
) -> OutboundCredentials:
    """Credentials for destination `destination`; raises ConfigError for a missing secret."""
    key = f"destinations.{destination}.auth"
    if isinstance(settings, ClientCredentialsAuth):
        return ClientCredentials(settings, key=key, verify=verify)
    return StaticBearer(settings, key=key)


class ClientCredentials:
    """An OAuth2 access token from `token_url`, cached until near expiry, thread-safe."""

    def __init__(
        self,
        settings: ClientCredentialsAuth,
        *,
        key: str,
        verify: bool | str = True,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._settings = settings
        self._key = key
        self._verify = settings.verify if settings.verify is not None else verify
        self._clock = clock
        self._environ = environ
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetch_count = 0  # token requests made, for tests and diagnostics
        self._secret()  # fail at start-up, naming the key, if the secret is missing

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            assert self._token is not None
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """The destination refused the token: the next `headers()` requests a new one."""
        with self._lock:
            self._token = None

    def _fetch(self) -> None:
        settings = self._settings
        extra: dict[str, Any] = {}
        if settings.audience:
            extra["audience"] = settings.audience
        started = self._clock()
        oauth2_client = _oauth2_client_class()
        try:
            with oauth2_client(
                client_id=settings.client_id,
                client_secret=self._secret(),
                scope=settings.scope,
                token_endpoint_auth_method=settings.token_auth_method,
                timeout=settings.timeout,
                verify=self._verify,
                follow_redirects=False,
            ) as client:
                token = client.fetch_token(
                    settings.token_url, grant_type="client_credentials", **extra
                )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise AuthError(
                f"{self._key}: token request to {settings.token_url} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:  # authlib's OAuthError: the endpoint said no (bad client...)
            if type(exc).__name__ != "OAuthError":
                raise
            raise AuthError(
                f"{self._key}: the token endpoint {settings.token_url} refused: {exc}"
            ) from exc
        access_token = token.get("access_token")
        token_type = str(token.get("token_type", "Bearer"))
        if not isinstance(access_token, str) or not access_token:
            raise AuthError(f"{self._key}: {settings.token_url} answered without an access_token")
        if token_type.lower() != "bearer":
            raise AuthError(
                f"{self._key}: {settings.token_url} issued a {token_type!r} token; "
                "only Bearer tokens are supported"
            )
        lifetime = _lifetime(token.get("expires_in"))
        self._token = access_token
        self._renew_at = started + lifetime - min(MAX_REFRESH_MARGIN, lifetime / 10)
        self.fetch_count += 1
        log.info(
            "obtained an access token for %s from %s (valid %.0f s)",
            self._key,
            settings.token_url,
            lifetime,
        )

    def _secret(self) -> str:
        settings = self._settings
        if settings.client_secret_env is not None:
            return _from_env(self._environ, settings.client_secret_env, f"{self._key}")
        assert settings.client_secret_file is not None
        return _from_file(settings.client_secret_file, f"{self._key}.client_secret_file")


class StaticBearer:
    """A token from an environment variable or a file (read per request: rotation works)."""

    def __init__(
        self, settings: BearerAuth, *, key: str, environ: Mapping[str, str] = os.environ
    ) -> None:
        self._settings = settings
        self._key = key
        self._environ = environ
        self._token()  # fail at start-up, naming the key, if the token is missing

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    def invalidate(self) -> None:
        log.warning("%s: the destination refused the static bearer token", self._key)

    def _token(self) -> str:
        if self._settings.token_env is not None:
            return _from_env(self._environ, self._settings.token_env, self._key)
        assert self._settings.token_file is not None
        return _from_file(self._settings.token_file, f"{self._key}.token_file")


def _lifetime(expires_in: object) -> float:
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some providers send a string
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return float(expires_in)
    return DEFAULT_LIFETIME


def _from_env(environ: Mapping[str, str], name: str, key: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{key}: the environment variable {name} is not set or empty")
    return value


def _from_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{key}: {path} is empty")
    return value


def _oauth2_client_class() -> Any:
    # authlib 1.9 warns at import that it would prefer the `httpx2` package to `httpx`; the
    # httpx fallback it uses is the supported client here, so that one warning is silenced.
    # authlib.deprecate installs an "always" filter when first imported; import it first so
    # the "ignore" below is in front of it.
    import authlib.deprecate  # noqa: F401

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The httpx module is deprecated")
        from authlib.integrations.httpx_client import OAuth2Client
    return OAuth2Client
