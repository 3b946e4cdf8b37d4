"""Security settings are validated when the config is read; every error names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.auth.settings import BearerAuth, ClientCredentialsAuth, OidcAuth, parse_inbound_auth
from gateway.config import DicomwebDestination, TlsSettings, parse_settings
from gateway.dimse.ae import client_ssl_context, server_ssl_context
from gateway.exceptions import ConfigError
from gateway.web.limits import HttpLimits
from tests.security.pki import CertificateAuthority


def _parse(tmp_path: Path, **top: Any) -> Any:
    return parse_settings(top, base_dir=tmp_path)


def _cloud(auth: dict[str, Any]) -> dict[str, Any]:
    return {"cloud": {"type": "dicomweb", "url": "https://archive.example", "auth": auth}}


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"mode": "ldap"}, "auth.mode is 'ldap'; use builtin"),
        ({"mode": "builtin", "secret": "x"}, "auth: unknown key(s) secret"),
        ({"mode": "oidc", "audience": "a"}, "auth.issuer is required"),
        ({"mode": "oidc", "issuer": "https://id.example"}, "auth.audience is required"),
        (
            {"mode": "oidc", "issuer": "http://id.example", "audience": "a"},
            "auth.issuer is 'http://id.example'; it must be an https:// URL",
        ),
        (
            {
                "mode": "oidc",
                "issuer": "https://id.example",
                "audience": "a",
                "algorithms": ["HS256"],
            },
            "auth.algorithms must be a list of signature algorithms",
        ),
        (
            {
                "mode": "oidc",
                "issuer": "https://id.example",
                "audience": "a",
                "algorithms": ["none"],
            },
            "never none or HS",
        ),
        (
            {
                "mode": "oidc",
                "issuer": "https://id.example",
                "audience": "a",
                "audience_claim": "x",
            },
            "auth.audience_claim is 'x'",
        ),
        (
            {"mode": "oidc", "issuer": "https://id.example", "audience": "a", "jwks_max_age": "1h"},
            "auth.jwks_max_age must be a number",
        ),
    ],
)
def test_inbound_auth_errors_name_the_key(
    tmp_path: Path, auth: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=_escape(message)):
        _parse(tmp_path, auth=auth)


def test_inbound_defaults(tmp_path: Path) -> None:
    assert _parse(tmp_path).auth == {"mode": "builtin"}
    oidc = parse_inbound_auth(
        {"mode": "oidc", "issuer": "https://login.example/tenant/v2.0", "audience": "api://gw"}
    )
    assert isinstance(oidc, OidcAuth) and oidc.jwks_max_age == 3600
    assert "HS256" not in oidc.algorithms and "none" not in oidc.algorithms
    local = parse_inbound_auth(
        {"mode": "oidc", "issuer": "http://127.0.0.1:8080/realms/x", "audience": "a"}
    )
    assert isinstance(local, OidcAuth)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"type": "basic"}, "destinations.cloud.auth.type is 'basic'"),
        (
            {
                "type": "client_credentials",
                "token_url": "https://id.example/token",
                "client_id": "c",
            },
            "destinations.cloud.auth: give exactly one of client_secret_env",
        ),
        (
            {
                "type": "client_credentials",
                "token_url": "https://id.example/token",
                "client_id": "c",
                "client_secret_env": "S",
                "client_secret_file": "s.txt",
            },
            "give exactly one of",
        ),
        (
            {
                "type": "client_credentials",
                "token_url": "https://id.example/token",
                "client_id": "c",
                "client_secret_env": "not a name",
            },
            "destinations.cloud.auth.client_secret_env must be the name of an environment variable",
        ),
        (
            {
                "type": "client_credentials",
                "token_url": "ftp://x",
                "client_id": "c",
                "client_secret_env": "S",
            },
            "destinations.cloud.auth.token_url is 'ftp://x'",
        ),
        (
            {"type": "client_credentials", "token_url": "https://x", "client_secret_env": "S"},
            "destinations.cloud.auth.client_id is required",
        ),
        (
            {
                "type": "client_credentials",
                "token_url": "https://x",
                "client_id": "c",
                "client_secret_env": "S",
                "client_secret": "inline",
            },
            "destinations.cloud.auth: unknown key(s) client_secret",
        ),
        ({"type": "bearer"}, "destinations.cloud.auth: give exactly one of token_env"),
        ({"type": "bearer", "token": "abc"}, "unknown key(s) token"),
    ],
)
def test_outbound_auth_errors_name_the_key(
    tmp_path: Path, auth: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=_escape(message)):
        _parse(tmp_path, destinations=_cloud(auth))


def test_outbound_auth_is_typed_and_paths_resolved(tmp_path: Path) -> None:
    settings = _parse(
        tmp_path,
        destinations={
            **_cloud(
                {
                    "type": "client_credentials",
                    "token_url": "https://id.example/oauth2/token",
                    "client_id": "gateway",
                    "client_secret_file": "secrets/cloud",
                    "scope": "dicomweb.write",
                }
            ),
            "peer": {
                "type": "dicomweb",
                "url": "https://peer.example",
                "auth": {"type": "bearer", "token_env": "PEER_TOKEN"},
            },
        },
    )
    cloud = settings.destinations["cloud"]
    assert isinstance(cloud, DicomwebDestination) and isinstance(cloud.auth, ClientCredentialsAuth)
    assert cloud.auth.client_secret_file == tmp_path / "secrets" / "cloud"
    assert cloud.auth.token_auth_method == "client_secret_basic"
    assert isinstance(settings.destinations["peer"].auth, BearerAuth)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"header_timeout": 0}, "http.limits.header_timeout is 0"),
        ({"max_connections": "many"}, "http.limits.max_connections must be a number"),
        ({"slowloris": 1}, "http.limits: unknown key(s) slowloris"),
    ],
)
def test_http_limits_errors(tmp_path: Path, limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=_escape(message)):
        _parse(tmp_path, http={"limits": limits})


def test_http_limits_defaults(tmp_path: Path) -> None:
    assert _parse(tmp_path).http.limits == HttpLimits()


def test_tls_errors_name_the_key(tmp_path: Path) -> None:
    ca = CertificateAuthority("ca", tmp_path / "pki")
    server = ca.issue("server", server=True)
    no_ca = TlsSettings(cert=server.cert, key=server.key, require_client_cert=True)
    with pytest.raises(ConfigError, match=r"dimse\.tls\.require_client_cert needs dimse\.tls\.ca"):
        server_ssl_context(no_ca)
    missing = TlsSettings(cert=tmp_path / "nope.pem", key=server.key)
    with pytest.raises(ConfigError, match=r"dimse\.tls: cannot load cert"):
        server_ssl_context(missing)
    other = ca.issue("other", server=False)
    mismatched = TlsSettings(cert=server.cert, key=other.key, ca=ca.cert)
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.tls: cannot load cert"):
        client_ssl_context(mismatched, "destinations.pacs.tls")
    bad_ca = TlsSettings(cert=server.cert, key=server.key, ca=tmp_path / "missing-ca.pem")
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.tls\.ca: cannot load"):
        client_ssl_context(bad_ca, "destinations.pacs.tls")
    # The listener trusts only the configured CA, never the system's public CAs.
    context = server_ssl_context(TlsSettings(cert=server.cert, key=server.key, ca=ca.cert))
    assert len(context.get_ca_certs()) == 1


def _escape(text: str) -> str:
    import re

    return re.escape(text)
