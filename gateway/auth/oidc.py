"""An OpenID Connect issuer's signing keys: discovery, JWKS fetch, cache and rotation.

Why a cache with two clocks: fetching keys on every request would put the identity provider
on the request path, yet keys rotate. Keys are kept for `jwks_max_age` seconds and fetched
again afterwards; a token naming a key id we do not know triggers an early fetch, at most one
per `jwks_min_refresh_interval`, so a flood of tokens with invented key ids cannot turn the
gateway into a load generator against the issuer. When a fetch fails, the keys we already
have stay in use (an identity provider hiccup must not lock every client out).

Fetches are synchronous (httpx) and run in the request's worker thread (see
gateway/web/guard.py); the lock makes concurrent callers wait for one fetch, not start many.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, KeySet

from gateway.auth.settings import OidcAuth
from gateway.exceptions import AuthError

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
_MAX_DOCUMENT_BYTES = 1 << 20
_RETRY_WITHOUT_KEYS = 2.0  # seconds between attempts while no key set was ever fetched


class OidcKeys:
    """The issuer's key set; `current` and `refresh_for_unknown_kid` feed JwtVerifier."""

    def __init__(
        self,
        settings: OidcAuth,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client = client or httpx.Client(
            timeout=settings.http_timeout, verify=settings.verify, follow_redirects=False
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks_url = settings.jwks_url
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self.fetch_count = 0  # key set downloads, for tests and diagnostics

    def current(self) -> KeySet:
        """The cached keys, fetched first if there are none or they are older than max age."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._settings.jwks_max_age:
                self._maybe_fetch(now)
            return self._available()

    def refresh_for_unknown_kid(self) -> KeySet:
        """Fetch again because a token names a key we lack, unless we fetched very recently."""
        with self._lock:
            self._maybe_fetch(self._clock())
            return self._available()

    def _available(self) -> KeySet:
        if self._keys is None:
            raise AuthError(f"the signing keys of {self._settings.issuer} are not available")
        return self._keys

    def _maybe_fetch(self, now: float) -> None:
        wait = self._settings.jwks_min_refresh_interval
        if self._keys is None:
            wait = min(wait, _RETRY_WITHOUT_KEYS)
        if self._last_attempt is not None and now - self._last_attempt < wait:
            return
        self._last_attempt = now
        try:
            keys = self._fetch()
        except AuthError as exc:
            if self._keys is None:
                raise
            log.warning("keeping the cached signing keys of %s: %s", self._settings.issuer, exc)
            return
        self._keys = keys
        self._fetched_at = now
        self.fetch_count += 1

    def _fetch(self) -> KeySet:
        if self._jwks_url is None:
            self._jwks_url = self._discover()
        document = self._get_json(self._jwks_url, "JWKS")
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list):
            raise AuthError(f"the JWKS at {self._jwks_url} has no 'keys' list")
        keys = []
        for item in raw_keys:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue  # encryption keys are not for verifying signatures
            try:
                keys.append(JWKRegistry.import_key(item))
            except (JoseError, ValueError, TypeError) as exc:
                log.warning("ignoring key %r from %s: %s", item.get("kid"), self._jwks_url, exc)
        if not keys:
            raise AuthError(f"the JWKS at {self._jwks_url} has no usable signing key")
        log.info(
            "fetched %d signing key(s) of %s: %s",
            len(keys),
            self._settings.issuer,
            ", ".join(str(key.kid) for key in keys),
        )
        return KeySet(keys)

    def _discover(self) -> str:
        issuer = self._settings.issuer
        document = self._get_json(issuer.rstrip("/") + DISCOVERY_PATH, "OIDC discovery")
        # OpenID Connect Discovery §4.3: the document must name exactly the issuer we trust.
        if document.get("issuer") != issuer:
            raise AuthError(
                f"the discovery document of {issuer} names issuer {document.get('issuer')!r}; "
                "set auth.issuer to exactly the `iss` the provider puts in its tokens"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise AuthError(f"the discovery document of {issuer} has no jwks_uri")
        if jwks_uri.startswith("http://") and not issuer.startswith("http://"):
            raise AuthError(f"the discovery document of {issuer} names a plain-HTTP jwks_uri")
        return jwks_uri

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            with self._client.stream("GET", url, headers={"Accept": "application/json"}) as reply:
                if reply.status_code != 200:
                    raise AuthError(f"{what} {url} answered HTTP {reply.status_code}")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_DOCUMENT_BYTES:
                        raise AuthError(f"{what} {url} is larger than 1 MiB")
        except httpx.HTTPError as exc:
            raise AuthError(f"cannot fetch {what} {url}: {type(exc).__name__}: {exc}") from exc
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise AuthError(f"{what} {url} is not JSON") from exc
        if not isinstance(document, dict):
            raise AuthError(f"{what} {url} is not a JSON object")
        return document

    def close(self) -> None:
        self._client.close()
