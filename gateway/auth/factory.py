"""Choose the inbound token verifier from the `auth` config section."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from gateway.auth.builtin import BuiltinIssuer
from gateway.auth.principal import Principal, TokenVerifier
from gateway.auth.settings import DEFAULT_KEY_FILE, BuiltinAuth, parse_inbound_auth
from gateway.config import Settings
from gateway.exceptions import ConfigError

__all__ = ["DEFAULT_KEY_FILE", "builtin_issuer", "make_verifier"]


def builtin_issuer(settings: Settings) -> BuiltinIssuer:
    """The built-in issuer; its key file is relative to the config file's folder."""
    auth = parse_inbound_auth(settings.auth)
    if not isinstance(auth, BuiltinAuth):
        raise ConfigError("auth.mode is oidc; tokens come from the OIDC issuer, not the gateway")
    base = settings.source.parent.resolve() if settings.source else Path.cwd()
    key_file = Path(auth.key_file).expanduser()
    if not key_file.is_absolute():
        key_file = base / key_file
    issuer = auth.issuer or f"urn:dicom-gateway:{settings.node.ae_title}"
    return BuiltinIssuer(key_file, issuer=issuer)


def make_verifier(settings: Settings) -> TokenVerifier:
    """A verifier for `auth.mode`, made when the first token arrives (see `OnFirstToken`)."""
    auth = parse_inbound_auth(settings.auth)
    if isinstance(auth, BuiltinAuth):
        return OnFirstToken(builtin_issuer(settings).verifier)

    def oidc() -> TokenVerifier:
        from gateway.auth.jwt import JwtVerifier
        from gateway.auth.oidc import OidcKeys

        keys = OidcKeys(auth)  # fetches the issuer's keys on first use, not here
        return JwtVerifier(
            keys=keys.current,
            on_unknown_key=keys.refresh_for_unknown_kid,
            issuer=auth.issuer,
            audience=auth.audience,
            algorithms=auth.algorithms,
            audience_claim=auth.audience_claim,
            scope_prefix=auth.scope_prefix,
        )

    return OnFirstToken(oidc)


class OnFirstToken:
    """A verifier built when the first bearer token arrives.

    Why: verifying imports joserfc and cryptography (and loads the signing key), about 11 MB
    of resident memory that a gateway receiving only C-STORE would carry for nothing. The
    settings were checked when the config was read; the key file when the issuer was made.
    """

    def __init__(self, build: Callable[[], TokenVerifier]) -> None:
        self._build = build
        self._verifier: TokenVerifier | None = None
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        verifier = self._verifier
        if verifier is None:
            with self._lock:  # tokens are verified in worker threads (gateway/web/guard.py)
                if self._verifier is None:
                    self._verifier = self._build()
                verifier = self._verifier
        return verifier.verify(token)
