"""Shared pieces of the security tests: an in-process gateway and hostile token makers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.config import Settings, parse_settings
from gateway.service import Gateway
from tests.harness import LOOPBACK, free_port

STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.11"
INSTANCE = "1.2.826.0.1.3680043.8.498.12"
_PARAMS = {"study": STUDY, "series": SERIES, "instance": INSTANCE, "frames": "1", "path": "x"}


@dataclass
class RunningGateway:
    gateway: Gateway
    settings: Settings
    url: str
    workdir: Path


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    *,
    auth: Mapping[str, Any],
    destinations: Mapping[str, Any] | None = None,
    routes: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Iterator[RunningGateway]:
    """A gateway (DIMSE + HTTP on 127.0.0.1) in this process, stopped afterwards."""
    http_port = free_port()
    raw: dict[str, Any] = {
        "node": {
            "ae_title": "GATEWAY",
            "dimse": {"host": LOOPBACK, "port": free_port()},
            "http": {"host": LOOPBACK, "port": http_port},
        },
        "storage": {"spool": "file://spool", "database": "sqlite:///gateway.db"},
        "destinations": dict(destinations or {}),
        "routes": [dict(route) for route in routes],
        "delivery": {"poll_interval": 0.05},
        "auth": dict(auth),
        **dict(extra or {}),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(raw))  # for CLI commands
    settings = parse_settings(raw, base_dir=workdir, source=workdir / "gateway.yaml")
    gateway = Gateway(settings)
    gateway.start()
    try:
        yield RunningGateway(gateway, settings, f"http://{LOOPBACK}:{http_port}", workdir)
    finally:
        gateway.stop()


def concrete_path(template: str) -> str:
    """A request path for a route template, with valid UIDs for its parameters."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _PARAMS.get(m.group(1), "x"), template)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Signer:
    """Makes tokens the way the gateway's trusted issuer would, and the hostile variants."""

    key: ECKey | RSAKey
    algorithm: str
    issuer: str
    audience: str

    def token(
        self,
        scopes: str,
        *,
        key: ECKey | RSAKey | None = None,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "route-tester",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "scope": scopes,
            **claims,
        }
        protected = {"alg": self.algorithm, "kid": self.key.kid, "typ": "JWT", **(header or {})}
        return jwt.encode(protected, body, key or self.key)

    def unsigned(self, scopes: str) -> str:
        """`alg: none`: a token anybody can write."""
        header = {"alg": "none", "typ": "JWT", "kid": self.key.kid}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "mallory",
            "exp": now + 600,
            "scope": scopes,
        }
        return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."

    def hmac_with_public_key(self, scopes: str) -> str:
        """HS256 with the issuer's *public* key as the secret (the key-confusion attack)."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.key.kid}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "mallory",
            "exp": now + 600,
            "scope": scopes,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        secret = self.key.as_pem(private=False)
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    def forged(self, scopes: str) -> str:
        """Right header and claims, signed by another key that claims the same kid."""
        impostor: ECKey | RSAKey
        if isinstance(self.key, ECKey):
            impostor = ECKey.generate_key("P-256", parameters={"kid": self.key.kid})
        else:
            impostor = RSAKey.generate_key(2048, parameters={"kid": self.key.kid})
        return self.token(scopes, key=impostor)


def hostile_tokens(signer: Signer, required: str, other_scopes: str) -> dict[str, str | None]:
    """Every way a request must be refused, by name; None means no Authorization header."""
    now = int(time.time())
    return {
        "no token": None,
        "garbage": "not.a.jwt",
        "bad signature": signer.forged(required),
        "expired": signer.token(required, exp=now - 120, iat=now - 900, nbf=now - 900),
        "not yet valid": signer.token(required, nbf=now + 900),
        "wrong audience": signer.token(required, aud="https://someone-else.example"),
        "wrong issuer": signer.token(required, iss="https://evil.example/"),
        "no subject": signer.token(required, sub=None),
        "alg none": signer.unsigned(required),
        "HS256 with public key": signer.hmac_with_public_key(required),
        "missing scope": signer.token(other_scopes),
    }
