"""OIDC mode: discovery, key caching and rotation against a local issuer on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import RSAKey

from gateway.auth.jwt import JwtVerifier
from gateway.auth.oidc import OidcKeys
from gateway.auth.principal import SCOPE_READ
from gateway.auth.settings import OidcAuth
from gateway.exceptions import AuthError
from tests.harness import LOOPBACK, free_port
from tests.security.issuer import LocalIssuer
from tests.security.support import running_gateway


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> LocalIssuer:
    with LocalIssuer() as running:
        yield running


def _verifier(keys: OidcKeys, issuer: LocalIssuer, **options: object) -> JwtVerifier:
    return JwtVerifier(
        keys=keys.current,
        on_unknown_key=keys.refresh_for_unknown_kid,
        issuer=issuer.issuer,
        audience=issuer.audience,
        **options,  # type: ignore[arg-type]
    )


def test_gateway_follows_the_issuers_key_rotation(issuer: LocalIssuer, tmp_path: Path) -> None:
    auth = {
        "mode": "oidc",
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "jwks_min_refresh_interval": 1,
    }
    with running_gateway(tmp_path, auth=auth) as gw, httpx.Client(base_url=gw.url) as client:

        def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return client.get("/studies", headers=headers).status_code

        old_key = issuer.signing_key
        assert status(issuer.token(SCOPE_READ)) == 200
        assert issuer.discovery_fetches == 1 and issuer.jwks_fetches == 1
        assert status(issuer.token(SCOPE_READ)) == 200
        assert issuer.jwks_fetches == 1, "keys are cached"

        issuer.rotate()  # the old key is withdrawn, a new one signs from now on
        time.sleep(1.1)
        assert status(issuer.token(SCOPE_READ)) == 200, "unknown kid: keys fetched again"
        assert issuer.jwks_fetches == 2
        assert status(issuer.token(SCOPE_READ, key=old_key)) == 401, "withdrawn key refused"

        # A flood of tokens naming keys nobody published costs the issuer at most one fetch
        # per jwks_min_refresh_interval.
        strangers = [LocalIssuer.new_key() for _ in range(3)]
        for index in range(30):
            assert status(issuer.token(SCOPE_READ, key=strangers[index % 3])) == 401
        assert issuer.jwks_fetches <= 3
        assert status(issuer.token(SCOPE_READ)) == 200


def test_keys_are_fetched_again_after_max_age_and_kept_when_the_issuer_is_down(
    issuer: LocalIssuer,
) -> None:
    clock = FakeClock()
    settings = OidcAuth(
        issuer=issuer.issuer, audience=issuer.audience, jwks_max_age=60, jwks_min_refresh_interval=5
    )
    keys = OidcKeys(settings, clock=clock)
    verifier = _verifier(keys, issuer)
    assert verifier.verify(issuer.token(SCOPE_READ)).subject == "test-user"
    clock.now += 59
    verifier.verify(issuer.token(SCOPE_READ))
    assert issuer.jwks_fetches == 1
    clock.now += 2
    verifier.verify(issuer.token(SCOPE_READ))
    assert issuer.jwks_fetches == 2, "refetched after max age"

    issuer.stop()  # the identity provider goes away: cached keys stay in use
    clock.now += 120
    assert verifier.verify(issuer.token(SCOPE_READ)).subject == "test-user"
    keys.close()


def test_discovery_must_name_the_configured_issuer(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    issuer.discovery_issuer = "https://impostor.example/realms/test"
    keys = OidcKeys(OidcAuth(issuer=issuer.issuer, audience=issuer.audience))
    with pytest.raises(AuthError, match=r"names issuer 'https://impostor\.example"):
        _verifier(keys, issuer).verify(issuer.token(SCOPE_READ))
    keys.close()


def test_unreachable_issuer_means_401_not_a_crash() -> None:
    settings = OidcAuth(issuer=f"http://{LOOPBACK}:{free_port()}/realms/x", audience="a")
    keys = OidcKeys(settings)
    verifier = JwtVerifier(keys=keys.current, issuer=settings.issuer, audience="a")
    signer = LocalIssuer()  # never started: just a key and a signer
    token = signer.token(SCOPE_READ)
    signer.stop()
    with pytest.raises(AuthError, match="cannot fetch OIDC discovery"):
        verifier.verify(token)
    with pytest.raises(AuthError, match="not available"):  # retried at most every 2 s
        verifier.verify(token)
    keys.close()


def test_jwks_url_skips_discovery_and_encryption_keys_are_ignored(issuer: LocalIssuer) -> None:
    enc = RSAKey.generate_key(2048, parameters={"kid": "enc-1", "use": "enc"})
    issuer.keys.insert(0, enc)
    settings = OidcAuth(
        issuer=issuer.issuer, audience=issuer.audience, jwks_url=f"{issuer.base}/realms/test/certs"
    )
    keys = OidcKeys(settings)
    assert [key.kid for key in keys.current().keys] == [issuer.signing_key.kid]
    assert issuer.discovery_fetches == 0
    keys.close()


@pytest.mark.parametrize(
    ("provider", "claims", "options", "scopes"),
    [
        (
            "keycloak",  # scope string, several audiences
            {"scope": "openid dicomweb.read", "aud": ["account", "dicom-gateway"]},
            {},
            {"openid", "dicomweb.read"},
        ),
        (
            "entra-delegated",  # scp string
            {"scope": None, "scp": "dicomweb.read dicomweb.write"},
            {},
            {"dicomweb.read", "dicomweb.write"},
        ),
        (
            "entra-app",  # app roles for client-credentials apps
            {"scope": None, "roles": ["dicomweb.write"]},
            {},
            {"dicomweb.write"},
        ),
        (
            "cognito",  # no aud in access tokens; client_id; resource-server scope prefix
            {"scope": "dicom-gateway/dicomweb.read", "aud": None, "client_id": "dicom-gateway"},
            {"audience_claim": "client_id", "scope_prefix": "dicom-gateway/"},
            {"dicomweb.read"},
        ),
    ],
)
def test_provider_token_shapes(
    issuer: LocalIssuer,
    provider: str,
    claims: dict[str, object],
    options: dict[str, object],
    scopes: set[str],
) -> None:
    keys = OidcKeys(OidcAuth(issuer=issuer.issuer, audience=issuer.audience))
    verifier = _verifier(keys, issuer, **options)
    assert verifier.verify(issuer.token(**claims)).scopes == scopes  # type: ignore[arg-type]
    if provider == "cognito":  # an ID token (aud = client, no client_id) is not an access token
        with pytest.raises(AuthError):
            verifier.verify(issuer.token("dicomweb.read", client_id=None))
    keys.close()


def test_log_names_the_refusal_reason(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    auth = {"mode": "oidc", "issuer": issuer.issuer, "audience": issuer.audience}
    with running_gateway(tmp_path, auth=auth) as gw, caplog.at_level(logging.INFO):
        token = issuer.token(SCOPE_READ, aud="other")
        reply = httpx.get(f"{gw.url}/studies", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 401
    assert any("refused GET /studies" in r.getMessage() for r in caplog.records)
