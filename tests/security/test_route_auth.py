"""Every route in the app refuses every bad credential: generated from the route table.

The route table (`gateway.web.app.endpoints`) is the source of truth. One test walks the routes
Starlette actually serves and proves each one comes from the table with a known scope; the
generated tests then send, to every route of a real gateway on 127.0.0.1, a request with no
token and with each hostile token (bad signature, expired, wrong audience or issuer, `alg:
none`, HS256 signed with the public key, missing scope...), in both auth modes (built-in issuer
and OIDC against a local issuer), and finally the right token, which must get through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import ECKey
from starlette.routing import Route

from gateway.auth.factory import DEFAULT_KEY_FILE, builtin_issuer, make_verifier
from gateway.auth.principal import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE
from gateway.web.app import create_app, endpoints
from gateway.web.context import WebContext
from gateway.web.guard import PUBLIC, Endpoint, guarded
from tests.security.issuer import LocalIssuer
from tests.security.support import (
    RunningGateway,
    Signer,
    concrete_path,
    hostile_tokens,
    running_gateway,
)

KNOWN_SCOPES = {PUBLIC, SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN}
OTHER_SCOPES = {
    SCOPE_READ: f"{SCOPE_WRITE} {SCOPE_ADMIN}",
    SCOPE_WRITE: f"{SCOPE_READ} {SCOPE_ADMIN}",
    SCOPE_ADMIN: f"{SCOPE_READ} {SCOPE_WRITE}",
}
ROUTES = [(e.path, method) for e in endpoints() for method in e.methods]


class AuthGateway:
    def __init__(self, running: RunningGateway, signer: Signer) -> None:
        self.running = running
        self.signer = signer
        self.client = httpx.Client(base_url=running.url, timeout=10)
        self.table = {(e.path, m): e for e in endpoints(running.settings) for m in e.methods}


@pytest.fixture(scope="module")
def builtin_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthGateway]:
    workdir = tmp_path_factory.mktemp("builtin")
    with running_gateway(workdir, auth={"mode": "builtin"}) as running:
        key_file = workdir / DEFAULT_KEY_FILE
        # Made on first use (gateway/auth/builtin.py): here the first token, as `token` does.
        assert not key_file.exists()
        builtin_issuer(running.settings).issue("fixture", [])
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        key = ECKey.import_key(json.loads(key_file.read_text()))
        signer = Signer(key, "ES256", "urn:dicom-gateway:GATEWAY", "dicom-gateway")
        gateway = AuthGateway(running, signer)
        yield gateway
        gateway.client.close()


@pytest.fixture(scope="module")
def oidc_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthGateway]:
    with LocalIssuer() as issuer:
        auth = {"mode": "oidc", "issuer": issuer.issuer, "audience": issuer.audience}
        with running_gateway(tmp_path_factory.mktemp("oidc"), auth=auth) as running:
            signer = Signer(issuer.signing_key, "RS256", issuer.issuer, issuer.audience)
            gateway = AuthGateway(running, signer)
            yield gateway
            gateway.client.close()


@pytest.fixture(params=["builtin", "oidc"])
def auth_gateway(request: pytest.FixtureRequest) -> AuthGateway:
    return request.getfixturevalue(f"{request.param}_gateway")  # type: ignore[no-any-return]


def _request(gw: AuthGateway, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if method == "POST":
        headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=b0'
        return gw.client.request(method, path, headers=headers, content=b"--b0--\r\n")
    return gw.client.request(method, path, headers=headers)


def test_every_served_route_comes_from_the_table_with_a_known_scope(
    builtin_gateway: AuthGateway,
) -> None:
    running = builtin_gateway.running
    gateway = running.gateway
    context = WebContext(
        settings=running.settings, ingestor=gateway.ingestor, db=gateway.db, spool=gateway.spool
    )
    app = create_app(context, make_verifier(running.settings))
    table = endpoints(running.settings)
    declared = {(e.path, m) for e in table for m in e.methods}
    served = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r} is not a table route"
        methods = set(route.methods or ()) - {"HEAD"}
        assert methods, f"{route.path} serves no method"
        served |= {(route.path, m) for m in methods}
    assert served == declared, "a route is served that the table does not declare, or vice versa"
    for endpoint in table:
        assert endpoint.scope in KNOWN_SCOPES, f"{endpoint.path}: unknown scope {endpoint.scope!r}"
    assert set(ROUTES) == declared, "the generated tests below must cover every route"


def test_an_endpoint_without_an_auth_decision_is_refused(builtin_gateway: AuthGateway) -> None:
    async def handler(request: object) -> object:
        raise AssertionError("never called")

    endpoint = Endpoint("/new", handler, ("GET",), "", "new")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no auth decision"):
        guarded(endpoint, make_verifier(builtin_gateway.running.settings))


@pytest.mark.parametrize(("path", "method"), ROUTES, ids=[f"{m} {p}" for p, m in ROUTES])
def test_route_refuses_bad_credentials_and_admits_the_right_one(
    auth_gateway: AuthGateway, path: str, method: str
) -> None:
    gw = auth_gateway
    endpoint = gw.table[(path, method)]
    url = concrete_path(path)
    if endpoint.scope == PUBLIC:
        response = _request(gw, method, url, None)
        assert response.status_code not in (401, 403), response.text
        return

    outcomes = {}
    for name, token in hostile_tokens(
        gw.signer, endpoint.scope, OTHER_SCOPES[endpoint.scope]
    ).items():
        response = _request(gw, method, url, token)
        challenge = response.headers.get("www-authenticate", "")
        outcomes[name] = (response.status_code, challenge.startswith("Bearer"))
    expected = {name: (401, True) for name in outcomes}
    expected["missing scope"] = (403, True)
    assert outcomes == expected

    # HEAD shares GET's guard (Starlette adds HEAD to GET routes).
    if method == "GET":
        assert _request(gw, "HEAD", url, None).status_code == 401

    response = _request(gw, method, url, gw.signer.token(endpoint.scope))
    assert response.status_code not in (401, 403), response.text
    assert "www-authenticate" not in response.headers


def test_refusals_say_why_without_leaking_the_token(auth_gateway: AuthGateway) -> None:
    gw = auth_gateway
    expired = gw.signer.token(SCOPE_READ, exp=1_000_000_000, iat=999_999_000, nbf=999_999_000)
    response = _request(gw, "GET", "/studies", expired)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert expired not in response.text
    forbidden = _request(gw, "POST", "/studies", gw.signer.token(SCOPE_READ))
    assert forbidden.status_code == 403
    assert 'scope="dicomweb.write"' in forbidden.headers["www-authenticate"]
