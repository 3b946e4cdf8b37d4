"""Choose the inbound token verifier from the `auth` config section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.auth.builtin import BuiltinIssuer
from gateway.auth.principal import TokenVerifier
from gateway.config import Settings
from gateway.exceptions import ConfigError

DEFAULT_KEY_FILE = "data/auth/signing-key.jwk.json"


def builtin_issuer(settings: Settings) -> BuiltinIssuer:
    """The built-in issuer; its key file is relative to the config file's folder."""
    auth: Mapping[str, Any] = settings.auth
    base = settings.source.parent.resolve() if settings.source else Path.cwd()
    key_file = Path(str(auth.get("key_file", DEFAULT_KEY_FILE))).expanduser()
    if not key_file.is_absolute():
        key_file = base / key_file
    issuer = str(auth.get("issuer", f"urn:dicom-gateway:{settings.node.ae_title}"))
    return BuiltinIssuer(key_file, issuer=issuer)


def make_verifier(settings: Settings) -> TokenVerifier:
    mode = settings.auth.get("mode", "builtin")
    if mode == "builtin":
        return builtin_issuer(settings).verifier()
    raise ConfigError(f"auth.mode is {mode!r}; use builtin")
