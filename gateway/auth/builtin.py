"""The built-in token issuer for standalone installs, so a fresh gateway is never open.

It keeps one EC P-256 signing key (a private JWK file, mode 0600) in the data folder, creates
it on first use, and signs short-lived ES256 tokens that the gateway's own verifier accepts.
`dicom-gateway token` prints one.

The key, and with it joserfc and cryptography (~11 MB resident), is loaded on first use, not
when the issuer is made: a gateway that only receives C-STORE never needs them. The first use
is the first `token` command or the first bearer token the server checks, whichever comes
first; whoever creates the file first wins, the other process reads it.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.exceptions import ConfigError

if TYPE_CHECKING:
    from joserfc.jwk import ECKey

    from gateway.auth.jwt import JwtVerifier

BUILTIN_AUDIENCE = "dicom-gateway"


class BuiltinIssuer:
    """Signs and verifies the gateway's own tokens with a key kept in `key_file`."""

    def __init__(self, key_file: Path, *, issuer: str) -> None:
        self.key_file = key_file
        self.issuer = issuer
        self._loaded: ECKey | None = None
        self._lock = threading.Lock()
        if key_file.exists():
            _check_readable(key_file)  # a broken key file is a start-up error, not a 500 later

    @property
    def _key(self) -> ECKey:
        with self._lock:
            if self._loaded is None:
                self._loaded = _load_or_create(self.key_file)
            return self._loaded

    def issue(self, subject: str, scopes: Iterable[str], *, ttl_seconds: float = 3600) -> str:
        from joserfc import jwt

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
        from joserfc.jwk import KeySet

        from gateway.auth.jwt import JwtVerifier

        keys = KeySet([self._key])
        return JwtVerifier(
            keys=lambda: keys, issuer=self.issuer, audience=BUILTIN_AUDIENCE, algorithms=("ES256",)
        )

    def public_jwks(self) -> dict[str, object]:
        return {"keys": [self._key.as_dict(private=False)]}


def _check_readable(key_file: Path) -> None:
    try:
        if not isinstance(json.loads(key_file.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise _unreadable(key_file, exc) from exc


def _unreadable(key_file: Path, exc: Exception) -> ConfigError:
    return ConfigError(
        f"auth: cannot read the built-in signing key {key_file}: {exc}; "
        "delete it to create a new one (existing tokens stop working)"
    )


def _load_or_create(key_file: Path) -> ECKey:
    from joserfc.jwk import ECKey

    if key_file.exists():
        try:
            return ECKey.import_key(json.loads(key_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise _unreadable(key_file, exc) from exc
    key = ECKey.generate_key(
        "P-256", parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "ES256"}
    )
    partial = key_file.with_name(f"{key_file.name}.{os.getpid()}.partial")
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(key.as_dict(private=True), handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # A link, not a rename: if another process (the server, `token`) created the key
            # meanwhile, theirs stays, and so do the tokens it signed.
            os.link(partial, key_file)
        except FileExistsError:
            return _load_or_create(key_file)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            os.replace(partial, key_file)  # a file system without hard links
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"auth: cannot write the built-in signing key {key_file}: {exc.strerror}"
        ) from exc
    return key
