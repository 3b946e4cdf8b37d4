"""The built-in token issuer for standalone installs, so a fresh gateway is never open.

It keeps one EC P-256 signing key (a private JWK file, mode 0600) in the data folder, creates
it on first use, and signs short-lived ES256 tokens that the gateway's own verifier accepts.
`dicom-gateway token` prints one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from gateway.auth.jwt import JwtVerifier
from gateway.exceptions import ConfigError

BUILTIN_AUDIENCE = "dicom-gateway"


class BuiltinIssuer:
    """Signs and verifies the gateway's own tokens with a key kept in `key_file`."""

    def __init__(self, key_file: Path, *, issuer: str) -> None:
        self.key_file = key_file
        self.issuer = issuer
        self._key = _load_or_create(key_file)

    def issue(self, subject: str, scopes: Iterable[str], *, ttl_seconds: float = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": BUILTIN_AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_seconds),
            "jti": secrets.token_hex(8),
            "scope": " ".join(sorted(set(scopes))),
        }
        return jwt.encode({"alg": "ES256", "kid": self._key.kid, "typ": "JWT"}, claims, self._key)

    def verifier(self) -> JwtVerifier:
        keys = KeySet([self._key])
        return JwtVerifier(
            keys=lambda: keys, issuer=self.issuer, audience=BUILTIN_AUDIENCE, algorithms=("ES256",)
        )

    def public_jwks(self) -> dict[str, object]:
        return {"keys": [self._key.as_dict(private=False)]}


def _load_or_create(key_file: Path) -> ECKey:
    if key_file.exists():
        try:
            return ECKey.import_key(json.loads(key_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"auth: cannot read the built-in signing key {key_file}: {exc}; "
                "delete it to create a new one (existing tokens stop working)"
            ) from exc
    key = ECKey.generate_key(
        "P-256", parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "ES256"}
    )
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        partial = key_file.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(key.as_dict(private=True), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, key_file)
    except OSError as exc:
        raise ConfigError(
            f"auth: cannot write the built-in signing key {key_file}: {exc.strerror}"
        ) from exc
    return key
