"""Choose the inbound token verifier from the `auth` config section."""

from __future__ import annotations

from pathlib import Path

from gateway.auth.builtin import BuiltinIssuer
from gateway.auth.jwt import JwtVerifier
from gateway.auth.principal import TokenVerifier
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
    """A verifier for `auth.mode`; OIDC keys are fetched on first use, not here."""
    auth = parse_inbound_auth(settings.auth)
    if isinstance(auth, BuiltinAuth):
        return builtin_issuer(settings).verifier()
    from gateway.auth.oidc import OidcKeys

    keys = OidcKeys(auth)
    return JwtVerifier(
        keys=keys.current,
        on_unknown_key=keys.refresh_for_unknown_kid,
        issuer=auth.issuer,
        audience=auth.audience,
        algorithms=auth.algorithms,
        audience_claim=auth.audience_claim,
        scope_prefix=auth.scope_prefix,
    )
