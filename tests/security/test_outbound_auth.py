"""Outbound OAuth2: client credentials against a real local token endpoint, static bearer.

The end-to-end test chains two gateways: A forwards over STOW-RS to B with client credentials
from the local issuer; B (auth.mode oidc) trusts the same issuer. Token expiry makes A fetch a
new token; a key rotation at the issuer makes B refuse A's cached token with 401, after which
A fetches a new one and retries once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from gateway.auditlog import recent_events
from gateway.auth.outbound import ClientCredentials, StaticBearer, make_outbound_credentials
from gateway.auth.settings import BearerAuth, ClientCredentialsAuth
from gateway.config import DicomwebDestination
from gateway.exceptions import AuthError, ConfigError
from gateway.forward.factory import make_sender
from gateway.forward.stowrs import StowRsSender
from tests.e2e.scu import send_files
from tests.harness import make_ct_series, wait_until
from tests.security.issuer import LocalIssuer
from tests.security.support import running_gateway

SECRET = "s3cr3t-value"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> LocalIssuer:
    with LocalIssuer(clients={"gateway-a": SECRET}, token_ttl=300) as running:
        yield running


def _settings(issuer: LocalIssuer, **overrides: object) -> ClientCredentialsAuth:
    values: dict[str, object] = {
        "token_url": f"{issuer.base}/realms/test/token",
        "client_id": "gateway-a",
        "client_secret_env": "A_SECRET",
        "scope": "dicomweb.write",
        **overrides,
    }
    return ClientCredentialsAuth(**values)  # type: ignore[arg-type]


def test_token_is_cached_until_near_expiry_and_renewed(issuer: LocalIssuer) -> None:
    clock = FakeClock()
    credentials = ClientCredentials(
        _settings(issuer), key="destinations.cloud.auth", clock=clock, environ={"A_SECRET": SECRET}
    )
    first = credentials.headers()
    assert first["Authorization"].startswith("Bearer ey")
    assert credentials.headers() == first
    assert len(issuer.token_requests) == 1
    request = issuer.token_requests[0]
    assert request["grant_type"] == "client_credentials" and request["scope"] == "dicomweb.write"
    assert "client_secret" not in request, "client_secret_basic: the secret is not in the body"

    clock.now += 300 - 31  # 300 s token, renewed 30 s (10 %) before it expires
    assert credentials.headers() == first
    clock.now += 2
    assert credentials.headers() != first
    assert len(issuer.token_requests) == 2


def test_invalidate_after_401_fetches_a_new_token(issuer: LocalIssuer) -> None:
    credentials = ClientCredentials(_settings(issuer), key="k", environ={"A_SECRET": SECRET})
    first = credentials.headers()
    credentials.invalidate()
    assert credentials.headers() != first
    assert len(issuer.token_requests) == 2


def test_concurrent_workers_share_one_token_request(issuer: LocalIssuer) -> None:
    credentials = ClientCredentials(_settings(issuer), key="k", environ={"A_SECRET": SECRET})
    results: list[dict[str, str]] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(credentials.headers())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({r["Authorization"] for r in results}) == 1
    assert len(issuer.token_requests) == 1


def test_client_secret_post_and_audience(issuer: LocalIssuer, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    settings = _settings(
        issuer,
        client_secret_env=None,
        client_secret_file=secret_file,
        token_auth_method="client_secret_post",
        audience="https://archive.example",
    )
    ClientCredentials(settings, key="k").headers()
    request = issuer.token_requests[0]
    assert request["client_secret"] == SECRET and request["audience"] == "https://archive.example"


def test_refusals_and_missing_secrets_are_clear(issuer: LocalIssuer) -> None:
    wrong = ClientCredentials(
        _settings(issuer), key="destinations.cloud.auth", environ={"A_SECRET": "nope"}
    )
    with pytest.raises(AuthError, match="refused") as refused:
        wrong.headers()
    assert "nope" not in str(refused.value)
    with pytest.raises(
        ConfigError, match=r"destinations\.cloud\.auth: the environment variable A_SECRET"
    ):
        ClientCredentials(_settings(issuer), key="destinations.cloud.auth", environ={})
    issuer.stop()
    down = ClientCredentials(_settings(issuer), key="k", environ={"A_SECRET": SECRET})
    with pytest.raises(AuthError, match=r"token request to \S+ failed"):
        down.headers()


def test_static_bearer_from_env_and_file(tmp_path: Path) -> None:
    from_env = StaticBearer(
        BearerAuth(token_env="PEER_TOKEN"), key="k", environ={"PEER_TOKEN": "abc"}
    )
    assert from_env.headers() == {"Authorization": "Bearer abc"}
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    from_file = StaticBearer(BearerAuth(token_file=token_file), key="k")
    assert from_file.headers() == {"Authorization": "Bearer first"}
    token_file.write_text("rotated")
    assert from_file.headers() == {"Authorization": "Bearer rotated"}, "read per request"
    with pytest.raises(ConfigError, match=r"destinations\.x\.auth: the environment variable NOPE"):
        make_outbound_credentials(BearerAuth(token_env="NOPE"), destination="x", verify=True)


def test_factory_wires_credentials_into_the_stow_sender(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A_SECRET", SECRET)
    destination = DicomwebDestination(
        name="cloud", url="https://archive.example/dicomweb", auth=_settings(issuer)
    )
    sender = make_sender(destination, calling_ae_title="GATEWAY")
    assert isinstance(sender, StowRsSender)
    assert sender._auth is not None and sender._on_unauthorized is not None
    assert sender._auth()["Authorization"].startswith("Bearer ")


def _instances_at(url: str, issuer: LocalIssuer, study_uid: str) -> int:
    headers = {"Authorization": f"Bearer {issuer.token('dicomweb.read')}"}
    reply = httpx.get(f"{url}/studies/{study_uid}/instances", headers=headers, timeout=10)
    return len(reply.json()) if reply.status_code == 200 else 0


def test_gateway_forwards_with_client_credentials_through_expiry_and_401(
    issuer: LocalIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer.token_ttl = 4
    monkeypatch.setenv("A_SECRET", SECRET)
    b_auth = {
        "mode": "oidc",
        "issuer": issuer.issuer,
        "audience": issuer.audience,
        "jwks_max_age": 1,
        "jwks_min_refresh_interval": 0,
    }
    with running_gateway(tmp_path / "b", auth=b_auth) as b:
        destination = {
            "type": "dicomweb",
            "url": b.url,
            "retry": {"initial_backoff": 0.2, "max_backoff": 1},
            "auth": {
                "type": "client_credentials",
                "token_url": f"{issuer.base}/realms/test/token",
                "client_id": "gateway-a",
                "client_secret_env": "A_SECRET",
                "scope": "dicomweb.write",
            },
        }
        with running_gateway(
            tmp_path / "a",
            auth={"mode": "builtin"},
            destinations={"b": destination},
            routes=[{"name": "all", "forward": ["b"]}],
        ) as a:

            def deliver(name: str) -> str:
                seed = ["first", "second", "third", "fourth"].index(name) + 1
                files = make_ct_series(tmp_path / name, 2, rows=32, cols=32, seed=seed)
                statuses = send_files(files, a.gateway.dimse_port)
                assert set(statuses.values()) == {0}
                study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
                wait_until(lambda: _instances_at(b.url, issuer, study) == 2, timeout=30)
                return study

            deliver("first")
            assert len(issuer.token_requests) == 1
            deliver("second")
            assert len(issuer.token_requests) == 1, "cached token reused"

            time.sleep(4)  # A's token expires
            deliver("third")
            assert len(issuer.token_requests) == 2, "expired token renewed before use"

            issuer.rotate()  # B stops trusting the key that signed A's cached token
            time.sleep(1.2)  # ... once its JWKS cache (max age 1 s) has expired
            deliver("fourth")
            assert len(issuer.token_requests) == 3, "HTTP 401 -> new token -> one retry"

        refused = [
            row
            for row in recent_events(b.gateway.db, actor="anonymous")
            if row["outcome"] == "401" and '"POST"' in row["detail"]
        ]
        assert len(refused) == 1, "B refused A's stale token exactly once"
