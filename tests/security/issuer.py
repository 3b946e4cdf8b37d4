"""A tiny OpenID Connect provider on 127.0.0.1 for auth tests, served by a real HTTP server.

It publishes discovery (`/.well-known/openid-configuration`) and its JWKS, signs tokens with
the newest of its RSA keys, can rotate keys, and runs a client-credentials token endpoint
(`POST /token`, client_secret_basic or client_secret_post). Counters let tests see how often
the gateway fetched keys or tokens.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.harness import LOOPBACK

DEFAULT_AUDIENCE = "dicom-gateway"


class LocalIssuer:
    def __init__(
        self,
        *,
        audience: str = DEFAULT_AUDIENCE,
        clients: dict[str, str] | None = None,
        token_ttl: int = 300,
        client_scopes: str = "dicomweb.read dicomweb.write",
    ) -> None:
        self.audience = audience
        self.clients = dict(clients or {})
        self.token_ttl = token_ttl
        self.client_scopes = client_scopes
        self.keys: list[RSAKey] = [self.new_key()]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.token_requests: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.discovery_issuer: str | None = None  # override to publish a mismatching issuer
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.issuer = f"{self.base}/realms/test"
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- keys and tokens --------------------------------------------------------------------

    @staticmethod
    def new_key() -> RSAKey:
        return RSAKey.generate_key(
            2048, parameters={"kid": secrets.token_hex(6), "use": "sig", "alg": "RS256"}
        )

    def rotate(self, *, keep_old: bool = False) -> RSAKey:
        key = self.new_key()
        with self._lock:
            self.keys = [*self.keys, key] if keep_old else [key]
        return key

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def claims(self, scopes: str = "dicomweb.read", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "test-user",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_ttl,
            "scope": scopes,
            "jti": secrets.token_hex(8),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, scopes: str = "dicomweb.read", *, key: RSAKey | None = None, **overrides: Any
    ) -> str:
        key = key or self.signing_key
        header = {"alg": "RS256", "kid": key.kid, "typ": "JWT"}
        return jwt.encode(header, self.claims(scopes, **overrides), key)

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self.keys]}

    # -- token endpoint ---------------------------------------------------------------------

    def _grant(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            user, _, password = decoded.partition(":")
            client_id, secret = urllib.parse.unquote(user), urllib.parse.unquote(password)
        self.token_requests.append({**form, "client_id": client_id or ""})
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if client_id not in self.clients or self.clients[client_id] != secret:
            return 401, {"error": "invalid_client"}
        scopes = form.get("scope") or self.client_scopes
        token = self.token(scopes, sub=client_id, client_id=client_id)
        self.issued.append(token)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}


def _handler(issuer: LocalIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/realms/test/.well-known/openid-configuration":
                issuer.discovery_fetches += 1
                self._json(
                    200,
                    {
                        "issuer": issuer.discovery_issuer or issuer.issuer,
                        "jwks_uri": f"{issuer.base}/realms/test/certs",
                        "token_endpoint": f"{issuer.base}/realms/test/token",
                    },
                )
            elif self.path == "/realms/test/certs":
                issuer.jwks_fetches += 1
                self._json(200, issuer.jwks())
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            if self.path != "/realms/test/token":
                self._json(404, {"error": "not found"})
                return
            form = dict(urllib.parse.parse_qsl(body))
            status, answer = issuer._grant(form, self.headers.get("Authorization"))
            self._json(status, answer)

    return Handler
