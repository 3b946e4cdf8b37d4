"""Bearer JWT verification with joserfc: signature, algorithm allow-list, iss, aud, exp, nbf.

`alg: none` and HMAC algorithms are never accepted (a public key must never double as an HMAC
secret). Scopes come from the space-separated `scope` claim, the `scp` claim (Entra ID, string
or list) and the `roles` claim (Entra ID app roles, granted to client-credentials apps); an
optional `scope_prefix` is stripped first (Cognito names custom scopes `<resource server>/x`).
The audience is normally `aud`; Cognito access tokens carry none and name the app client in
`client_id`, so the claim to compare is configurable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry

from gateway.auth.principal import Principal
from gateway.auth.settings import ASYMMETRIC_ALGORITHMS
from gateway.exceptions import AuthError

LEEWAY_SECONDS = 30


class JwtVerifier:
    """Verifies tokens against a key set from `keys()` (called per token, so rotation works)."""

    def __init__(
        self,
        *,
        keys: Callable[[], KeySet],
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = ASYMMETRIC_ALGORITHMS,
        on_unknown_key: Callable[[], KeySet] | None = None,
        audience_claim: str = "aud",
        scope_prefix: str = "",
    ) -> None:
        unsafe = [alg for alg in algorithms if alg.lower() == "none" or alg.startswith("HS")]
        if unsafe:
            raise ValueError(f"refusing unsafe JWT algorithms: {', '.join(unsafe)}")
        self._keys = keys
        self._on_unknown_key = on_unknown_key
        self._algorithms = list(algorithms)
        self._scope_prefix = scope_prefix
        self._claims = JWTClaimsRegistry(
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": issuer},
            exp={"essential": True},
            sub={"essential": True},
        )
        self._claims.options[audience_claim] = {"essential": True, "value": audience}

    def verify(self, token: str) -> Principal:
        try:
            decoded = self._decode(token, self._keys())
        except _UnknownKey:
            if self._on_unknown_key is None:
                raise AuthError("token signed with an unknown key") from None
            try:
                decoded = self._decode(token, self._on_unknown_key())
            except _UnknownKey:
                raise AuthError("token signed with an unknown key") from None
        claims: dict[str, Any] = dict(decoded.claims)
        try:
            self._claims.validate(claims)
        except JoseError as exc:
            raise AuthError(f"token rejected: {exc.description or exc.error}") from exc
        scopes = _scopes(claims, self._scope_prefix)
        return Principal(
            subject=str(claims["sub"]),
            scopes=scopes,
            client_id=str(claims.get("client_id") or claims.get("azp") or "") or None,
        )

    def _decode(self, token: str, keys: KeySet) -> jwt.Token:
        try:
            header = extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError) as exc:
            raise AuthError("malformed bearer token") from exc
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise AuthError(f"token algorithm {algorithm!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not any(key.kid == kid for key in keys.keys):
            raise _UnknownKey
        try:
            return jwt.decode(token, keys, algorithms=self._algorithms)
        except (JoseError, ValueError) as exc:
            raise AuthError("token signature is invalid") from exc


class _UnknownKey(Exception):
    pass


def _scopes(claims: dict[str, Any], prefix: str = "") -> frozenset[str]:
    granted: set[str] = set()
    for name in ("scope", "scp", "roles"):
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    if prefix:
        granted = {item.removeprefix(prefix) for item in granted}
    return frozenset(granted)
